"""Triton backend: the gateway in front of one or more real Triton servers (replicas).

The only module that imports ``tritonclient`` on the gateway side. It speaks gRPC through
``tritonclient.grpc.aio`` (a small pool of channels per server), carries each request's
deadline to Triton, and maps Triton's errors to the gateway's by status code, never by
message text.

Replicas and failover: a request runs on the least busy healthy server holding its variant.
A server that refuses connections, or misses two liveness probes in a row (a hang), is
marked unhealthy at once; its calls in flight are cancelled and retried on another replica,
or on the fallback backend, within the same deadline. The probe brings it back when it
answers again, after reading what it holds.

Placement: with explicit model control and a GPU-memory budget per server, the backend
decides which variants are resident. The data plane reports, per request, the variant the
selector would pick (``note_demand``) and leases a resident one to run on (``acquire``);
:func:`gateway.routing.placement.plan_placement` decides loads and evictions, which run in
the background. An evicted variant takes no new requests and is unloaded only once its leases
and runs have finished. Without a budget every variant is loaded on every server.

Triton's own metrics endpoint, when configured, is polled with each probe: its queue time
per request (against its execution time) and pending count become the queue depth the
selector adds as wait, and its inference counts mark variants as recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcclient
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.backends.base import Backend, GraphRunner, Lease, ModelRef, loop_runner
from gateway.errors import (
    BackendTimeoutError,
    CapacityExhaustedError,
    GatewayError,
    InvalidRequestError,
    VariantUnavailableError,
)
from gateway.manifest import split_model_name
from gateway.metrics import GatewayMetrics
from gateway.routing.placement import DecayingCounts, PlacementPlan, Resident, plan_placement
from gateway.tasks.base import Tensor

log = logging.getLogger(__name__)

# Statuses meaning "this server cannot answer": mark it down, try another replica.
_SERVER_DOWN = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}
_TIMEOUT = {"StatusCode.DEADLINE_EXCEEDED"}
_BUSY = {"StatusCode.RESOURCE_EXHAUSTED"}
_BAD_INPUT = {"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"}
# Triton answers NOT_FOUND for a model that is not (or no longer) loaded.
_NOT_LOADED = {"StatusCode.NOT_FOUND", "StatusCode.FAILED_PRECONDITION"}
_MISCONFIGURED = {
    "StatusCode.UNIMPLEMENTED",
    "StatusCode.PERMISSION_DENIED",
    "StatusCode.UNAUTHENTICATED",
}

FALLBACK = "embedded"
"""The ``server`` label of runs served by the fallback backend."""
DRAIN_MARGIN = 2.0
"""A busy variant is displaced only by at least this many times its own demand."""
LOAD_RETRY_S = 30.0
"""After a failed load, the same variant is not tried again on that server for this long."""
PROBE_MISSES = 2
"""Probes in a row a server may miss (time out) before it counts as hung."""
_WAIT_SLICE_S = 0.1
"""Longest sleep of a request waiting for a load, so it re-plans as leases end."""


class TritonInternalError(RuntimeError):
    """Triton failed a run for a reason of its own (INTERNAL, UNKNOWN, ...): a 500."""


class _ServerDownError(Exception):
    """A call was cancelled because its server was marked unhealthy mid-call."""


def to_gateway_error(exc: InferenceServerException, model: str) -> Exception:
    """Map a Triton error to the gateway's table by its status code.

    Unavailable, not-loaded and misconfigured servers are ``VariantUnavailableError``;
    Triton's own failures (INTERNAL, UNKNOWN, no status) are :class:`TritonInternalError`,
    which clients see as INTERNAL like any failed graph run.
    """
    status = str(exc.status() or "")
    text = f"Triton ({status.removeprefix('StatusCode.') or 'no status'}) for {model}: "
    text += str(exc.message())
    if status in _TIMEOUT:
        return BackendTimeoutError(text)
    if status in _BUSY:
        return CapacityExhaustedError(text)
    if status in _BAD_INPUT:
        return InvalidRequestError(text)
    if status in _SERVER_DOWN | _NOT_LOADED | _MISCONFIGURED:
        return VariantUnavailableError(text)
    return TritonInternalError(text)


# -- Triton's metrics ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model in one scrape of Triton's ``/metrics``."""

    requests: float = 0.0
    """``nv_inference_request_success``."""
    queue_us: float = 0.0
    """``nv_inference_queue_duration_us``."""
    executions: float = 0.0
    """``nv_inference_exec_count``."""
    compute_us: float = 0.0
    """``nv_inference_compute_infer_duration_us``."""
    pending: float = 0.0
    """``nv_inference_pending_request_count`` (a gauge)."""


_COUNTER_FIELDS = {
    "nv_inference_request_success": "requests",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_exec_count": "executions",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_pending_request_count": "pending",
}


def parse_triton_metrics(text: str) -> dict[str, ModelCounters]:
    """Per-model counters from the text of Triton's metrics endpoint (versions summed)."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        name = _COUNTER_FIELDS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            # The parser names counter samples "<family>_total"; skip any "_created".
            if model is None or sample.name not in (family.name, f"{family.name}_total"):
                continue
            fields = values.setdefault(model, {})
            fields[name] = fields.get(name, 0.0) + sample.value
    return {model: ModelCounters(**fields) for model, fields in values.items()}


@dataclass(frozen=True)
class QueueSignal:
    """What Triton reported about one model between two scrapes.

    Attributes:
        requests: Requests it completed in between.
        queue_s: Mean time a request waited in Triton's queue (0 without requests).
        execution_s: Mean time of one model execution (0 without executions).
        pending: Requests waiting for execution at the later scrape.
    """

    requests: float
    queue_s: float
    execution_s: float
    pending: float

    def runs_ahead(self, instances: int) -> int:
        """Triton's queue expressed as executions waiting ahead of a new request.

        The larger of the pending count and the mean queue time over the mean execution
        time (times the instances executing in parallel), so a queue that built and drained
        between two scrapes still shows.
        """
        by_time = 0.0
        if self.execution_s > 0:
            by_time = self.queue_s / self.execution_s * max(1, instances)
        return max(round(self.pending), math.floor(by_time))


def queue_signal(before: ModelCounters | None, after: ModelCounters) -> QueueSignal:
    """Difference two scrapes of one model (a restarted server counts from zero)."""
    base = before or ModelCounters()
    if after.requests < base.requests:  # counters reset: the server restarted
        base = ModelCounters()
    requests = after.requests - base.requests
    executions = after.executions - base.executions
    queue_s = (after.queue_us - base.queue_us) / requests / 1e6 if requests > 0 else 0.0
    execution_s = (after.compute_us - base.compute_us) / executions / 1e6 if executions else 0.0
    return QueueSignal(requests, max(0.0, queue_s), max(0.0, execution_s), after.pending)


# -- servers -------------------------------------------------------------------------------


@dataclass
class ServerState:
    """What the gateway knows about one Triton server."""

    url: str
    metrics_url: str | None = None
    clients: list[grpcclient.InferenceServerClient] = field(default_factory=list)
    healthy: bool = False
    """Answering probes; false until the first probe succeeds."""
    loaded: set[str] = field(default_factory=set)
    """Resident and ready: new requests may go there."""
    loading: set[str] = field(default_factory=set)
    draining: set[str] = field(default_factory=set)
    """Chosen for eviction: only requests already leased there still run on it."""
    in_flight: dict[str, int] = field(default_factory=dict)
    """Graph runs sent to the server and not yet answered, per model."""
    leases: dict[str, int] = field(default_factory=dict)
    """Requests leased to a model on this server."""
    calls: set[asyncio.Future[Any]] = field(default_factory=set)
    instances: dict[str, int] = field(default_factory=dict)
    last_used_s: dict[str, float] = field(default_factory=dict)
    load_failed: dict[str, tuple[float, str]] = field(default_factory=dict)
    counters: dict[str, ModelCounters] = field(default_factory=dict)
    signals: dict[str, QueueSignal] = field(default_factory=dict)
    misses: int = 0
    last_error: str = ""
    _next_client: int = 0

    def client(self) -> grpcclient.InferenceServerClient:
        """The next channel of the pool, round robin."""
        self._next_client = (self._next_client + 1) % len(self.clients)
        return self.clients[self._next_client]

    def total_in_flight(self) -> int:
        """Requests this server is working on."""
        return sum(self.in_flight.values()) + sum(self.leases.values())

    def held(self) -> set[str]:
        """Every model this server holds, is loading or is draining."""
        return self.loaded | self.loading | self.draining

    def busy(self, name: str) -> int:
        """Runs and leases of ``name`` here."""
        return self.in_flight.get(name, 0) + self.leases.get(name, 0)


class TritonBackend:
    """A ``PlacingBackend`` over Triton replicas, with optional fallback to another backend.

    Nothing touches the network until :meth:`start`, which must run on the event loop that
    will use the backend (gRPC aio channels belong to the loop that created them).
    """

    runs_in_caller = False
    """Graph calls go through the event loop, so task code must not run on it."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        metrics_urls: Sequence[str] = (),
        explicit_model_control: bool = True,
        gpu_memory_budget_bytes: int | None = None,
        fallback: Backend | None = None,
        channels_per_server: int = 2,
        probe_interval_s: float = 1.0,
        load_timeout_s: float = 120.0,
        demand_window_s: float = 30.0,
        metrics: GatewayMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Describe the servers; connect later, in :meth:`start`.

        Args:
            urls: gRPC ``host:port`` of each Triton replica.
            metrics_urls: Triton metrics URL of each replica (same order), or none.
            explicit_model_control: The servers run with ``--model-control-mode=explicit``,
                so the gateway loads and unloads models; otherwise Triton already holds its
                repository and loading only checks readiness.
            gpu_memory_budget_bytes: Per server, the sum of resident variants'
                ``gpu_memory_bytes`` to keep within; None loads every variant everywhere.
            fallback: Backend serving when no server can (it holds every variant).
            channels_per_server: gRPC channels (connections) per server.
            probe_interval_s: Seconds between liveness probes (and metrics polls); also a
                probe's timeout.
            load_timeout_s: Seconds one model load may take.
            demand_window_s: Time constant of the decaying demand counts.
            metrics: Receives health, placement and run metrics.
            clock: Monotonic seconds.
        """
        if not urls:
            raise ValueError("TritonBackend needs at least one server URL")
        if metrics_urls and len(metrics_urls) != len(urls):
            raise ValueError("give one metrics URL per server, or none")
        if gpu_memory_budget_bytes is not None and not explicit_model_control:
            raise ValueError("a GPU-memory budget needs explicit model control")
        self.servers = [
            ServerState(url, metrics_urls[i] if metrics_urls else None)
            for i, url in enumerate(urls)
        ]
        self._by_url = {s.url: s for s in self.servers}
        self.explicit = explicit_model_control
        self.budget_bytes = gpu_memory_budget_bytes
        self.fallback = fallback
        self.channels_per_server = channels_per_server
        self.probe_interval_s = probe_interval_s
        self.load_timeout_s = load_timeout_s
        self.metrics = metrics
        self.clock = clock
        self.known: dict[str, ModelRef] = {}
        """Variants the registry serves (``load`` was called), by model name."""
        self.demand = DecayingCounts(demand_window_s)
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed: asyncio.Event | None = None
        self._waiters = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channels, probe every server once and start the background probes."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            # Reconnect quickly after a restart; gRPC's default backoff grows to minutes.
            options = [
                ("grpc.max_send_message_length", 2**31 - 1),
                ("grpc.max_receive_message_length", 2**31 - 1),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                # A pool needs its own connections, not one subchannel shared by all.
                ("grpc.use_local_subchannel_pool", 1),
            ]
            self._changed = asyncio.Event()
            for server in self.servers:
                server.clients = [
                    grpcclient.InferenceServerClient(server.url, channel_args=options)
                    for _ in range(self.channels_per_server)
                ]
                if self.metrics is not None:
                    self.metrics.triton_server_healthy.labels(server.url).set(0)
                    if self.budget_bytes is not None:
                        self.metrics.triton_gpu_memory_budget_bytes.labels(server.url).set(
                            self.budget_bytes
                        )
            await asyncio.gather(*(self._probe(s) for s in self.servers))
            for server in self.servers:
                self._spawn(self._probe_loop(server))
            self._started = True

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop probes and placements, close every channel and the fallback."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for server in self.servers:
            for client in server.clients:
                with contextlib.suppress(Exception):
                    await client.close()
            server.clients = []
        self._started = False
        if self.fallback is not None:
            await self.fallback.close()

    def _notify(self) -> None:
        """Wake requests waiting for residency or health to change."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def _wait_change(self, timeout_s: float) -> None:
        event = self._changed
        if event is None:
            await asyncio.sleep(timeout_s)
            return
        self._waiters += 1
        try:
            await asyncio.wait_for(event.wait(), min(timeout_s, _WAIT_SLICE_S))
        except TimeoutError:
            pass
        finally:
            self._waiters -= 1

    # -- health ----------------------------------------------------------------------------

    async def _probe_loop(self, server: ServerState) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            try:
                await self._probe(server)
            except Exception:  # a probe must never stop probing
                log.exception("probing triton %s failed", server.url)

    async def _probe(self, server: ServerState) -> None:
        refused = False
        try:
            live = bool(await server.client().is_server_live(client_timeout=self.probe_interval_s))
            error = "" if live else "server says it is not live"
        except InferenceServerException as exc:
            live, error = False, f"{exc.status()}: {exc.message()}"
            refused = str(exc.status()) in _SERVER_DOWN
        if not live:
            server.misses += 1
            if server.healthy and (refused or server.misses >= PROBE_MISSES):
                self._mark_down(server, error or "no answer")
            return
        server.misses = 0
        if not server.healthy:
            await self._recover(server)
            return
        if self.explicit:
            await self._reconcile(server)
        if server.metrics_url is not None:
            await self._poll_metrics(server)

    def _mark_down(self, server: ServerState, error: str) -> None:
        if not server.healthy:
            return
        server.healthy = False
        server.last_error = error
        server.loaded.clear()
        server.draining.clear()
        for call in list(server.calls):
            call.cancel()  # its request moves to another replica within its deadline
        log.warning("triton %s marked unhealthy: %s", server.url, error)
        if self.metrics is not None:
            self.metrics.triton_server_healthy.labels(server.url).set(0)
        self._publish(server)
        self._notify()

    async def _index(self, server: ServerState) -> dict[str, str]:
        """Every model of the server's repository → its state ("" when never loaded)."""
        index = await server.client().get_model_repository_index(
            client_timeout=max(self.probe_interval_s, 5.0)
        )
        return {m.name: m.state for m in index.models}

    async def _recover(self, server: ServerState) -> None:
        """A server answers again: learn what it holds, load what it should, then use it."""
        try:
            states = await self._index(server)
        except InferenceServerException as exc:
            server.last_error = str(exc.message())
            return
        server.loaded = {name for name, state in states.items() if state == "READY"}
        server.draining.clear()
        server.counters.clear()
        server.signals.clear()
        for name in server.loaded:
            await self._read_instances(server, name)
        if self.explicit and self.budget_bytes is None:
            missing = [ref for name, ref in self.known.items() if name not in server.loaded]
            await asyncio.gather(
                *(self._load_on(server, ref, "recovery") for ref in missing),
                return_exceptions=True,
            )
        server.healthy = True
        log.info(
            "triton %s healthy; it holds %s",
            server.url,
            ", ".join(sorted(server.loaded)) or "no models",
        )
        if self.metrics is not None:
            self.metrics.triton_server_healthy.labels(server.url).set(1)
        self._publish(server)
        self._notify()

    async def _reconcile(self, server: ServerState) -> None:
        """Follow loads and unloads made by others (another gateway, an operator)."""
        try:
            states = await self._index(server)
        except InferenceServerException:
            return  # the next probe decides about health
        if not server.healthy:
            return
        busy = server.loading | server.draining
        ready = {name for name, state in states.items() if state == "READY"}
        added = ready - server.loaded - busy
        removed = server.loaded - ready - busy
        if not added and not removed:
            return
        server.loaded = (server.loaded | added) - removed
        log.info(
            "triton %s changed outside this gateway: now also %s, no longer %s",
            server.url,
            ", ".join(sorted(added)) or "nothing",
            ", ".join(sorted(removed)) or "nothing",
        )
        self._publish(server)
        self._notify()
        for name in added:
            await self._read_instances(server, name)

    async def _poll_metrics(self, server: ServerState) -> None:
        assert server.metrics_url is not None
        loop = asyncio.get_running_loop()
        try:
            text = await loop.run_in_executor(None, _fetch, server.metrics_url, 2.0)
        except OSError as exc:
            log.debug("triton metrics %s: %s", server.metrics_url, exc)
            return
        now = self.clock()
        counters = parse_triton_metrics(text)
        for name, after in counters.items():
            signal = queue_signal(server.counters.get(name), after)
            server.signals[name] = signal
            if signal.requests > 0:
                server.last_used_s[name] = max(server.last_used_s.get(name, 0.0), now)
            if self.metrics is not None and name in self.known:
                family, variant = split_model_name(name)
                self.metrics.triton_queue_seconds.labels(server.url, family, variant or "").set(
                    signal.queue_s
                )
        server.counters = counters

    # -- placement -------------------------------------------------------------------------

    def _residents(self, server: ServerState, now_s: float) -> list[Resident]:
        return [
            Resident(
                model_name=name,
                gpu_memory_bytes=self._bytes(name),
                in_flight=server.busy(name),
                demand=self.demand.value(name, now_s),
                last_used_s=server.last_used_s.get(name, 0.0),
                loading=name in server.loading or name in server.draining,
            )
            for name in server.held()
        ]

    def _bytes(self, name: str) -> int:
        ref = self.known.get(name)
        return ref.gpu_memory_bytes if ref is not None else 0

    def _recently_failed(self, server: ServerState, name: str, now_s: float) -> bool:
        failed = server.load_failed.get(name)
        return failed is not None and now_s - failed[0] < LOAD_RETRY_S

    def _plan(self, server: ServerState, ref: ModelRef, urgent: bool) -> bool:
        """Plan ``ref`` onto ``server`` and start the plan; True if a load started."""
        name = ref.model_name
        now = self.clock()
        if name in server.held() or self._recently_failed(server, name, now):
            return False
        if self.budget_bytes is None:
            plan = PlacementPlan(name, (), "no budget: every variant is loaded")
        else:
            demand = math.inf if urgent else self.demand.value(name, now)
            plan = plan_placement(
                name,
                ref.gpu_memory_bytes,
                demand,
                self._residents(server, now),
                self.budget_bytes,
                drain_margin=DRAIN_MARGIN,
            )
        if plan.load is None:
            return False
        # Commit before any await, so concurrent plans see this one.
        for victim in plan.evict:
            server.loaded.discard(victim)
            server.draining.add(victim)
        server.loading.add(name)
        reason = "urgent" if urgent else "demand"
        log.info(
            "triton %s: load %s (%s; %s)%s",
            server.url,
            name,
            reason,
            plan.reason,
            f", evicting {', '.join(plan.evict)}" if plan.evict else "",
        )
        self._publish(server)
        self._spawn(self._apply(server, ref, plan.evict, reason))
        return True

    async def _apply(
        self, server: ServerState, ref: ModelRef, evict: tuple[str, ...], reason: str
    ) -> None:
        try:
            for victim in evict:
                await self._drain_and_unload(server, victim, "evicted")
            if not server.healthy:
                return
            await self._load_on(server, ref, reason)
        except (GatewayError, InferenceServerException) as exc:
            log.warning("triton %s: placing %s failed: %s", server.url, ref.model_name, exc)
        finally:
            server.loading.discard(ref.model_name)
            self._publish(server)
            self._notify()

    async def _drain_and_unload(self, server: ServerState, name: str, reason: str) -> None:
        """Unload ``name`` from ``server`` once no request runs on it or holds a lease."""
        server.loaded.discard(name)
        server.draining.add(name)
        try:
            while server.healthy and server.busy(name) > 0:
                await asyncio.sleep(0.005)
            if not server.healthy or not self.explicit:
                return
            await server.client().unload_model(name, client_timeout=self.load_timeout_s)
            # Triton unloads in the background; the memory is free once the model is gone.
            deadline = self.clock() + self.load_timeout_s
            while self.clock() < deadline:
                states = await self._index(server)
                if states.get(name) not in ("READY", "UNLOADING", "LOADING"):
                    break
                await asyncio.sleep(0.02)
            log.info("triton %s: unloaded %s (%s)", server.url, name, reason)
            self._count_unload(server, name, reason)
        except InferenceServerException as exc:
            log.warning("triton %s: unloading %s: %s", server.url, name, exc.message())
        finally:
            server.draining.discard(name)
            self._publish(server)
            self._notify()

    async def _read_instances(self, server: ServerState, name: str) -> None:
        """Model instances executing in parallel, from the model's config (default 1)."""
        try:
            config = await server.client().get_model_config(
                name, client_timeout=max(self.probe_interval_s, 5.0)
            )
            server.instances[name] = max(1, sum(g.count for g in config.config.instance_group))
        except InferenceServerException:
            server.instances[name] = 1

    async def _load_on(self, server: ServerState, ref: ModelRef, reason: str) -> None:
        name = ref.model_name
        server.loading.add(name)
        started = self.clock()
        try:
            if self.explicit:
                await server.client().load_model(name, client_timeout=self.load_timeout_s)
            ready = await server.client().is_model_ready(name, client_timeout=self.load_timeout_s)
            if not ready:
                raise VariantUnavailableError(f"Triton {server.url} did not make {name} ready")
            await self._read_instances(server, name)
        except InferenceServerException as exc:
            message = str(exc.message())
            server.load_failed[name] = (self.clock(), message)
            self._count_load(server, name, reason, "failed")
            raise VariantUnavailableError(
                f"Triton {server.url} cannot load {name}: {message}"
            ) from exc
        except VariantUnavailableError as exc:
            server.load_failed[name] = (self.clock(), str(exc))
            self._count_load(server, name, reason, "failed")
            raise
        finally:
            server.loading.discard(name)
        server.load_failed.pop(name, None)
        if server.healthy or reason == "recovery":
            server.loaded.add(name)
        log.info(
            "triton %s: loaded %s in %.2f s (%s)", server.url, name, self.clock() - started, reason
        )
        self._count_load(server, name, reason, "ok")
        self._publish(server)
        self._notify()

    def _count_load(self, server: ServerState, name: str, reason: str, outcome: str) -> None:
        if self.metrics is not None:
            family, variant = split_model_name(name)
            self.metrics.triton_loads_total.labels(
                server.url, family, variant or "", reason, outcome
            ).inc()

    def _count_unload(self, server: ServerState, name: str, reason: str) -> None:
        if self.metrics is not None:
            family, variant = split_model_name(name)
            self.metrics.triton_unloads_total.labels(
                server.url, family, variant or "", reason
            ).inc()

    def _publish(self, server: ServerState) -> None:
        """Resident bytes and per-variant residency of ``server`` as gauges."""
        if self.metrics is None:
            return
        held = server.held()
        self.metrics.triton_resident_bytes.labels(server.url).set(sum(self._bytes(n) for n in held))
        for name in self.known:
            family, variant = split_model_name(name)
            self.metrics.triton_variant_resident.labels(server.url, family, variant or "").set(
                1 if name in server.loaded else 0
            )

    # -- the Backend protocol --------------------------------------------------------------

    async def load(self, ref: ModelRef) -> None:
        """Make ``ref`` servable.

        Without a budget it is loaded on every healthy server (ready once one holds it);
        with one it only has to be in a server's repository, and loads on demand. Servers
        that are down load it when they recover.

        Raises:
            VariantUnavailableError: The healthy servers cannot load it (or lack it).
        """
        await self.start()
        name = ref.model_name
        replaced = self.known.get(name) not in (None, ref)
        self.known[name] = ref
        if replaced and self.explicit:
            # A rebuilt variant: Triton reloads a loaded model in place from its new files.
            await asyncio.gather(
                *(self._load_on(s, ref, "reload") for s in self.servers if name in s.loaded),
                return_exceptions=True,
            )
        if self.fallback is not None:
            # Warm, so failing over within a deadline needs no model load.
            await self.fallback.load(ref)
        healthy = [s for s in self.servers if s.healthy]
        if not healthy:
            log.warning("%s: no Triton server is healthy; it loads when one is", name)
            return
        if not self.explicit or self.budget_bytes is None:
            results = await asyncio.gather(
                *(self._load_on(s, ref, "startup") for s in healthy if name not in s.loaded),
                return_exceptions=True,
            )
            if any(name in s.loaded for s in self.servers) or self.fallback is not None:
                return
            errors = "; ".join(str(r) for r in results if isinstance(r, BaseException))
            raise VariantUnavailableError(f"no Triton server loaded {name}: {errors}")
        for server in healthy:
            with contextlib.suppress(InferenceServerException):
                if name in await self._index(server):
                    self._publish(server)
                    return
        raise VariantUnavailableError(f"no Triton server's repository has {name}")

    async def unload(self, ref: ModelRef) -> None:
        """Stop serving ``ref``: unloaded everywhere once its requests have finished."""
        name = ref.model_name
        if self.fallback is not None:
            await self.fallback.unload(ref)
        if self.known.get(name) != ref:
            return  # replaced by a rebuilt variant of the same name, which stays
        del self.known[name]
        self.demand.forget(name)
        await asyncio.gather(
            *(
                self._drain_and_unload(s, name, "retired")
                for s in self.servers
                if s.healthy and name in s.loaded
            )
        )

    def is_ready(self, ref: ModelRef) -> bool:
        """Resident on a healthy server, or ready on the fallback."""
        name = ref.model_name
        if any(s.healthy and name in s.loaded for s in self.servers):
            return True
        return self.fallback is not None and self.fallback.is_ready(ref)

    def queue_depth(self, ref: ModelRef) -> int:
        """Runs of ``ref`` waiting at the servers, as Triton's metrics and our counts say.

        Per server the larger of: runs sent beyond its model instances, and Triton's own
        queue (pending count, or queue time over execution time) from the last poll.
        """
        name = ref.model_name
        depth = 0
        for s in self.servers:
            if not s.healthy or name not in s.loaded:
                continue
            instances = s.instances.get(name, 1)
            own = max(0, s.in_flight.get(name, 0) - instances)
            signal = s.signals.get(name)
            depth += max(own, signal.runs_ahead(instances) if signal is not None else 0)
        if self.fallback is not None:
            depth += self.fallback.queue_depth(ref)
        return depth

    def healthy_servers(self) -> list[str]:
        """URLs of the servers currently considered healthy."""
        return [s.url for s in self.servers if s.healthy]

    # -- the PlacingBackend protocol -------------------------------------------------------

    def can_hold(self, ref: ModelRef) -> bool:
        """Within a server's budget (or no budget), or a fallback holds it."""
        if self.fallback is not None or self.budget_bytes is None:
            return True
        return ref.gpu_memory_bytes <= self.budget_bytes

    def is_serving(self) -> bool:
        """A server is healthy, or a fallback serves."""
        return self.fallback is not None or any(s.healthy for s in self.servers)

    def note_demand(self, ref: ModelRef) -> None:
        """Count demand for ``ref`` and start loading it where the plan allows."""
        name = ref.model_name
        self.demand.add(name, self.clock())
        if not self.explicit:
            return
        for server in self.servers:
            if server.healthy and name not in server.held():
                self._plan(server, ref, urgent=False)

    def _least_busy(self, name: str) -> ServerState | None:
        options = [s for s in self.servers if s.healthy and name in s.loaded]
        return min(options, key=ServerState.total_in_flight, default=None)

    def _place_urgent(self, refs: Sequence[ModelRef]) -> bool:
        """Start a load for the best of ``refs`` that some server can take now."""
        if not self.explicit:
            return False
        healthy = sorted(
            (s for s in self.servers if s.healthy),
            key=lambda s: sum(self._bytes(n) for n in s.held()),
        )
        for ref in refs:
            if any(ref.model_name in s.loading for s in healthy):
                return True
            for server in healthy:
                if self._plan(server, ref, urgent=True):
                    return True
        return False

    def _load_error(self, refs: Sequence[ModelRef]) -> str | None:
        """The last load error if every healthy server recently failed every one of refs."""
        now = self.clock()
        errors = []
        for server in self.servers:
            if not server.healthy:
                continue
            for ref in refs:
                if not self._recently_failed(server, ref.model_name, now):
                    return None
                errors.append(f"{server.url}: {server.load_failed[ref.model_name][1]}")
        return "; ".join(errors) or None

    async def acquire(self, refs: Sequence[ModelRef], timeout_s: float) -> Lease:
        """Lease the first resident of ``refs``, loading one if none is (see the protocol)."""
        if not refs:
            raise ValueError("acquire needs at least one variant")
        deadline = self.clock() + timeout_s
        while True:
            for ref in refs:
                server = self._least_busy(ref.model_name)
                if server is not None:
                    server.leases[ref.model_name] = server.leases.get(ref.model_name, 0) + 1
                    return Lease(ref, server.url)
            placing = self._place_urgent(refs)
            if self.fallback is not None and self.fallback.is_ready(refs[0]):
                return Lease(refs[0], "")
            names = ", ".join(r.model_name for r in refs)
            if not any(s.healthy for s in self.servers):
                errors = "; ".join(f"{s.url}: {s.last_error}" for s in self.servers)
                raise VariantUnavailableError(f"no Triton server is healthy ({errors})")
            if not placing and (error := self._load_error(refs)) is not None:
                raise VariantUnavailableError(f"cannot load {names} on Triton: {error}")
            if not self.explicit:
                raise VariantUnavailableError(f"no Triton server has {names} ready")
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise BackendTimeoutError(
                    f"none of {names} was loaded on Triton within the request's deadline"
                )
            await self._wait_change(remaining)

    def release(self, lease: Lease) -> None:
        """End ``lease``; a variant waiting to be evicted may go once its last lease ends."""
        server = self._by_url.get(lease.holder)
        if server is None:
            return
        name = lease.ref.model_name
        left = server.leases.get(name, 0) - 1
        if left > 0:
            server.leases[name] = left
            return
        server.leases.pop(name, None)
        if self._waiters:
            self._notify()

    async def run_leased(
        self, lease: Lease, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Run on the lease's server while it serves the variant; else as :meth:`run`."""
        return await self._run(lease.ref, inputs, timeout_s, lease.holder)

    def graph_runner(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> GraphRunner:
        """Run the lease's graph from a worker thread, through this backend on ``loop``."""
        return loop_runner(self.run_leased, lease, loop)

    async def run(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Run on the least busy healthy replica; fail over within the same deadline."""
        return await self._run(ref, inputs, timeout_s, "")

    # -- inference -------------------------------------------------------------------------

    def _pick(self, name: str, tried: set[str], prefer: str) -> ServerState | None:
        preferred = self._by_url.get(prefer)
        if (
            preferred is not None
            and preferred.healthy
            and preferred.url not in tried
            and (name in preferred.loaded or name in preferred.draining)
        ):
            return preferred
        options = [s for s in self.servers if s.healthy and name in s.loaded and s.url not in tried]
        return min(options, key=ServerState.total_in_flight, default=None)

    async def _run(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float | None, prefer: str
    ) -> dict[str, Tensor]:
        name = ref.model_name
        deadline = self.clock() + (self.load_timeout_s if timeout_s is None else timeout_s)
        tried: set[str] = set()
        last: Exception | None = None
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise BackendTimeoutError(f"the deadline passed before {name} ran") from last
            server = self._pick(name, tried, prefer)
            if server is None:
                if self.fallback is not None and self.fallback.is_ready(ref):
                    return await self._run_fallback(ref, inputs, remaining)
                # Nothing holds it now (a server died, or it was evicted between two graph
                # calls of this request): load it again if any server is up, within the
                # deadline.
                placing = self._place_urgent([ref])
                if (
                    not self.explicit
                    or not any(s.healthy for s in self.servers)
                    or (not placing and self._load_error([ref]) is not None)
                ):
                    raise last or VariantUnavailableError(f"no healthy Triton server holds {name}")
                await self._wait_change(remaining)
                tried.clear()
                continue
            tried.add(server.url)
            try:
                outputs = await self._infer(server, name, inputs, remaining)
            except _ServerDownError:
                last = VariantUnavailableError(f"Triton {server.url} went down during {name}")
                self._count_run(server.url, name, "failover")
                continue
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                error = to_gateway_error(exc, name)
                if status in _SERVER_DOWN:
                    self._mark_down(server, f"{status}: {exc.message()}")
                    self._count_run(server.url, name, "failover")
                    last = error
                    continue
                if status in _NOT_LOADED:
                    # Unloaded behind our back (another gateway, an operator): re-plan.
                    server.loaded.discard(name)
                    self._publish(server)
                    self._count_run(server.url, name, "failover")
                    last = error
                    continue
                self._count_run(server.url, name, "error")
                raise error from exc
            self._count_run(server.url, name, "ok")
            return outputs

    async def _run_fallback(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float
    ) -> dict[str, Tensor]:
        assert self.fallback is not None
        try:
            outputs = await self.fallback.run(ref, inputs, timeout_s)
        except Exception:
            self._count_run(FALLBACK, ref.model_name, "error")
            raise
        self._count_run(FALLBACK, ref.model_name, "ok")
        return outputs

    def _count_run(self, server: str, name: str, outcome: str) -> None:
        if self.metrics is not None:
            family, variant = split_model_name(name)
            self.metrics.triton_runs_total.labels(server, family, variant or "", outcome).inc()

    async def _infer(
        self, server: ServerState, name: str, inputs: Mapping[str, Tensor], timeout_s: float
    ) -> dict[str, Tensor]:
        infer_inputs = []
        for key, value in inputs.items():
            array = np.ascontiguousarray(value)
            tensor = grpcclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        server.in_flight[name] = server.in_flight.get(name, 0) + 1
        server.last_used_s[name] = self.clock()
        # Its own task, so marking the server down can cancel just this call.
        call = asyncio.ensure_future(
            server.client().infer(name, infer_inputs, client_timeout=timeout_s)
        )
        server.calls.add(call)
        try:
            result = await call
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # our caller gave up
            raise _ServerDownError(server.url) from None
        finally:
            server.calls.discard(call)
            left = server.in_flight[name] - 1
            server.in_flight[name] = left
            if left == 0 and self._waiters:
                self._notify()
        response = result.get_response()
        return {out.name: result.as_numpy(out.name) for out in response.outputs}


def _fetch(url: str, timeout_s: float) -> str:
    """GET ``url`` as text (runs on a worker thread)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - configured
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")
