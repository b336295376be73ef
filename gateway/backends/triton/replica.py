"""One Triton server as the gateway sees it: its connections, what it holds, what runs there.

:class:`Replica` owns its state and changes it only through its own methods, each one
transition (a load begins, a variant drains, the server goes down), so the invariants live
in one place: a model is in at most one of loaded / loading / draining, and a server that is
down holds nothing that takes requests.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.backends.triton.errors import ServerDownError, TritonInternalError
from gateway.backends.triton.server_metrics import ModelCounters, QueueSignal, queue_signal
from gateway.tasks.base import Tensor

PROBE_MISSES = 2
"""Probes in a row a server may miss (time out) before it counts as hung."""
LOAD_RETRY_S = 30.0
"""After a failed load, the same variant is not tried again on that server for this long."""
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 2**31 - 1),
    ("grpc.max_receive_message_length", 2**31 - 1),
    # Reconnect quickly after a restart; gRPC's default backoff grows to minutes.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # A pool needs its own connections, not one subchannel shared by all.
    ("grpc.use_local_subchannel_pool", 1),
]


class Replica:
    """A Triton server: a small pool of gRPC channels and what the gateway knows about it."""

    def __init__(
        self, url: str, metrics_url: str | None, on_idle: Callable[[], None] = lambda: None
    ) -> None:
        """Describe the server at gRPC ``url``; nothing connects until :meth:`open`.

        Args:
            url: gRPC ``host:port``.
            metrics_url: Its Triton metrics URL, or None.
            on_idle: Called when a model's last run in flight here ends.
        """
        self.url = url
        self.metrics_url = metrics_url
        self.graphs: dict[str, tuple[str, ...]] = {}
        """Variants of several graphs → their graphs' Triton models (shared by the fleet):
        such a variant is loaded here when every one of them is."""
        self._healthy = False
        self._last_error = ""
        self._on_idle = on_idle
        self._clients: list[grpcclient.InferenceServerClient] = []
        self._next_client = 0
        self._loaded: set[str] = set()
        """Resident and ready: new requests may go there."""
        self._loading: set[str] = set()
        self._draining: set[str] = set()
        """Chosen for eviction: only requests already leased there still run on it."""
        self._in_flight: dict[str, int] = {}
        """Graph runs sent to the server and not yet answered, per model."""
        self._leases: dict[str, int] = {}
        """Requests leased to a model on this server."""
        self._calls: set[asyncio.Future[Any]] = set()
        self._instances: dict[str, int] = {}
        self._last_used_s: dict[str, float] = {}
        self._load_failed: dict[str, tuple[float, str]] = {}
        self._counters: dict[str, ModelCounters] = {}
        self._signals: dict[str, QueueSignal] = {}
        self._misses = 0
        self.outages = 0
        """Times the server was marked down: a reading taken across one may be stale."""

    @property
    def healthy(self) -> bool:
        """Answering probes; false until the first probe succeeds."""
        return self._healthy

    @property
    def last_error(self) -> str:
        """Why the server was last found unusable ("" if never)."""
        return self._last_error

    # -- connections -----------------------------------------------------------------------

    def open(self, channels: int, credentials: grpc.ChannelCredentials | None = None) -> None:
        """Open ``channels`` gRPC channels on the running loop (TLS with ``credentials``)."""
        self._clients = [
            grpcclient.InferenceServerClient(
                self.url, channel_args=CHANNEL_OPTIONS, creds=credentials
            )
            for _ in range(channels)
        ]

    async def close(self) -> None:
        """Close every channel."""
        for client in self._clients:
            with contextlib.suppress(Exception):  # closing must not fail the shutdown
                await client.close()
        self._clients = []

    def client(self) -> grpcclient.InferenceServerClient:
        """The next channel of the pool, round robin."""
        self._next_client = (self._next_client + 1) % len(self._clients)
        return self._clients[self._next_client]

    # -- what it holds ---------------------------------------------------------------------

    def serves(self, name: str) -> bool:
        """Healthy, with ``name`` loaded and taking new requests."""
        return self.healthy and name in self._loaded

    def holds(self, name: str) -> bool:
        """``name`` is loaded here (whatever the server's health)."""
        return name in self._loaded

    def is_loading(self, name: str) -> bool:
        """A load of ``name`` is under way here."""
        return name in self._loading

    def runs(self, name: str) -> bool:
        """Requests already leased to ``name`` here may still run: loaded or draining."""
        return name in self._loaded or name in self._draining

    def loaded(self) -> frozenset[str]:
        """Models loaded here and taking requests."""
        return frozenset(self._loaded)

    def held(self) -> frozenset[str]:
        """Every model this server holds, is loading or is draining."""
        return frozenset(self._loaded | self._loading | self._draining)

    def in_transition(self, name: str) -> bool:
        """``name`` is loading or draining here."""
        return name in self._loading or name in self._draining

    def busy(self, name: str) -> int:
        """Runs and leases of ``name`` here."""
        return self._in_flight.get(name, 0) + self._leases.get(name, 0)

    def total_in_flight(self) -> int:
        """Requests this server is working on."""
        return sum(self._in_flight.values()) + sum(self._leases.values())

    def last_used_s(self, name: str) -> float:
        """When ``name`` last ran here (clock seconds; 0 if never)."""
        return self._last_used_s.get(name, 0.0)

    def queue_depth(self, name: str) -> int:
        """Runs of ``name`` waiting here: beyond its instances, or in Triton's own queue."""
        instances = self._instances.get(name, 1)
        own = max(0, self._in_flight.get(name, 0) - instances)
        signal = self._signals.get(name)
        return max(own, signal.runs_ahead(instances) if signal is not None else 0)

    def recently_failed(self, name: str, now_s: float) -> bool:
        """A load of ``name`` failed here less than :data:`LOAD_RETRY_S` ago."""
        failed = self._load_failed.get(name)
        return failed is not None and now_s - failed[0] < LOAD_RETRY_S

    def load_error(self, name: str) -> str:
        """The message of the last failed load of ``name`` here ("" if none)."""
        failed = self._load_failed.get(name)
        return failed[1] if failed is not None else ""

    # -- health ----------------------------------------------------------------------------

    def probe_missed(self, refused: bool) -> bool:
        """Count a failed probe; True if the server should now be marked down.

        A refused connection counts at once; a hang after :data:`PROBE_MISSES` in a row.
        """
        self._misses += 1
        return self.healthy and (refused or self._misses >= PROBE_MISSES)

    def probe_answered(self) -> None:
        """A probe succeeded: the count of misses starts again."""
        self._misses = 0

    def mark_down(self, error: str) -> bool:
        """Take the server out of service; its calls in flight fail over. False if it was."""
        if not self._healthy:
            return False
        self._healthy = False
        self.outages += 1
        self._last_error = error
        self._loaded.clear()
        self._draining.clear()
        for call in list(self._calls):
            call.cancel()  # its request moves to another replica within its deadline
        return True

    def adopt(self, ready: Iterable[str]) -> None:
        """Start from what a recovering server says it holds; old queue readings go."""
        self._loaded = set(ready)
        self._draining.clear()
        self._counters.clear()
        self._signals.clear()

    def mark_up(self) -> None:
        """Back in service."""
        self._healthy = True

    def note_error(self, error: str) -> None:
        """Remember why the server could not be used (shown when nothing is healthy)."""
        self._last_error = error

    def follow(self, ready: Iterable[str]) -> tuple[set[str], set[str]]:
        """Follow loads and unloads made by others; returns (added, removed) names."""
        ready = set(ready)
        moving = self._loading | self._draining
        added = ready - self._loaded - moving
        removed = self._loaded - ready - moving
        self._loaded = (self._loaded | added) - removed
        return added, removed

    # -- placement transitions -------------------------------------------------------------

    def begin_load(self, name: str) -> None:
        """A load of ``name`` starts (committed before any await, so plans see it)."""
        self._loading.add(name)

    def end_load(self, name: str) -> None:
        """A load of ``name`` is no longer under way (whatever its outcome)."""
        self._loading.discard(name)

    def load_succeeded(self, name: str, take_requests: bool) -> None:
        """Triton made ``name`` ready; with ``take_requests`` new requests may go there."""
        self._load_failed.pop(name, None)
        if take_requests:
            self._loaded.add(name)

    def load_failed(self, name: str, now_s: float, message: str) -> None:
        """Remember a failed load of ``name``, so it is not retried at once."""
        self._load_failed[name] = (now_s, message)

    def begin_drain(self, name: str) -> None:
        """``name`` takes no new requests here; leased ones still run until it unloads."""
        self._loaded.discard(name)
        self._draining.add(name)

    def end_drain(self, name: str) -> None:
        """``name`` is gone from this server."""
        self._draining.discard(name)

    def lost(self, name: str) -> None:
        """Triton no longer has ``name`` loaded (unloaded behind the gateway's back)."""
        self._loaded.discard(name)

    def lease(self, name: str) -> None:
        """A request claims ``name`` here."""
        self._leases[name] = self._leases.get(name, 0) + 1

    def release(self, name: str) -> bool:
        """A claim on ``name`` ends; True when it was the last one."""
        left = self._leases.get(name, 0) - 1
        if left > 0:
            self._leases[name] = left
            return False
        self._leases.pop(name, None)
        return True

    def record_scrape(self, counters: Mapping[str, ModelCounters], now_s: float) -> None:
        """Turn a scrape of Triton's metrics into queue signals; used models are marked."""
        for name, after in counters.items():
            signal = queue_signal(self._counters.get(name), after)
            self._signals[name] = signal
            if signal.requests > 0:
                self._last_used_s[name] = max(self._last_used_s.get(name, 0.0), now_s)
        self._counters = dict(counters)

    def queue_seconds(self, name: str) -> float:
        """Mean queue time of ``name`` between the last two scrapes (0 if unknown)."""
        signal = self._signals.get(name)
        return signal.queue_s if signal is not None else 0.0

    # -- calls -----------------------------------------------------------------------------

    async def is_live(self, timeout_s: float) -> bool:
        """Triton's liveness answer; raises ``InferenceServerException`` without one."""
        return bool(await self.client().is_server_live(client_timeout=timeout_s))

    async def repository_index(self, timeout_s: float) -> dict[str, str]:
        """Every model of the server's repository → its state ("" when never loaded).

        A variant of several graphs is listed under its own name too: READY when all its
        graphs are, else the state of the first that is not.
        """
        index = await self.client().get_model_repository_index(client_timeout=timeout_s)
        states = {m.name: m.state for m in index.models}
        for variant, graphs in self.graphs.items():
            pending = [states.get(g, "") for g in graphs if states.get(g, "") != "READY"]
            states[variant] = pending[0] if pending else "READY"
        return states

    async def read_instances(self, name: str, timeout_s: float) -> None:
        """Model instances executing in parallel, from the model's config (default 1)."""
        try:
            model = self.graphs.get(name, (name,))[0]
            config = await self.client().get_model_config(model, client_timeout=timeout_s)
            self._instances[name] = max(1, sum(g.count for g in config.config.instance_group))
        except InferenceServerException:
            self._instances[name] = 1

    async def load_model(self, name: str, explicit: bool, timeout_s: float) -> bool:
        """Ask Triton to load ``name`` (explicit model control); True once it is ready.

        A variant of several graphs loads every graph's model; it is ready when all are.
        """
        ready = True
        for model in self.graphs.get(name, (name,)):
            if explicit:
                await self.client().load_model(model, client_timeout=timeout_s)
            ready &= bool(await self.client().is_model_ready(model, client_timeout=timeout_s))
        return ready

    async def unload_model(self, name: str, timeout_s: float, clock: Callable[[], float]) -> None:
        """Unload ``name`` and wait until Triton has released it (it unloads in background)."""
        for model in self.graphs.get(name, (name,)):
            await self.client().unload_model(model, client_timeout=timeout_s)
        deadline = clock() + timeout_s
        while clock() < deadline:
            states = await self.repository_index(max(timeout_s, 5.0))
            if states.get(name) not in ("READY", "UNLOADING", "LOADING"):
                return
            await asyncio.sleep(0.02)

    async def infer(
        self,
        name: str,
        inputs: Mapping[str, Tensor],
        timeout_s: float,
        now_s: float,
        model: str | None = None,
    ) -> dict[str, Tensor]:
        """Run ``name`` once here (``model``: the Triton model of one of its graphs).

        Raises:
            ServerDownError: The server was marked down while the call was in flight.
            InferenceServerException: Triton answered with an error.
        """
        infer_inputs = []
        for key, value in inputs.items():
            array = np.ascontiguousarray(value)
            tensor = grpcclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        self._in_flight[name] = self._in_flight.get(name, 0) + 1
        self._last_used_s[name] = now_s
        # Its own task, so marking the server down can cancel just this call.
        call = asyncio.ensure_future(
            self.client().infer(model or name, infer_inputs, client_timeout=timeout_s)
        )
        self._calls.add(call)
        try:
            result = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller gave up
            raise ServerDownError(self.url) from None
        finally:
            self._calls.discard(call)
            left = self._in_flight[name] - 1
            self._in_flight[name] = left
            if left == 0:
                self._on_idle()
        response = result.get_response()
        try:
            return {out.name: result.as_numpy(out.name) for out in response.outputs}
        except ValueError as exc:  # e.g. an output whose data does not fill its shape
            raise TritonInternalError(
                f"Triton {self.url} answered {name} with a malformed response: {exc}"
            ) from exc


def least_busy(replicas: Iterable[Replica]) -> Replica | None:
    """The replica working on the fewest requests, or None."""
    return min(replicas, key=Replica.total_in_flight, default=None)
