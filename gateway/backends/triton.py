"""Triton backend: the gateway in front of one or more real Triton servers (replicas).

The only module that imports ``tritonclient`` on the gateway side. It speaks gRPC through
``tritonclient.grpc.aio`` (one channel per server, multiplexed), carries each request's
deadline to Triton, spreads load over healthy replicas (fewest in flight first), marks a
server unhealthy when it stops answering and retries the request on another replica, or on
the fallback backend, within the same deadline. A background probe brings a server back
when it answers again and reloads what it should hold. Triton errors map to the gateway's
by status code, never by message text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from gateway.backends.base import Backend, ModelRef
from gateway.errors import (
    BackendTimeoutError,
    CapacityExhaustedError,
    GatewayError,
    InvalidRequestError,
    VariantUnavailableError,
)
from gateway.tasks.base import Tensor

log = logging.getLogger(__name__)

# Statuses meaning "this server cannot answer": try another replica.
_SERVER_DOWN = {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED", "StatusCode.UNKNOWN"}
_TIMEOUT = {"StatusCode.DEADLINE_EXCEEDED"}
_BUSY = {"StatusCode.RESOURCE_EXHAUSTED"}
_BAD_INPUT = {"StatusCode.INVALID_ARGUMENT"}
_NOT_LOADED = {"StatusCode.NOT_FOUND", "StatusCode.FAILED_PRECONDITION"}


@dataclass
class ServerState:
    """What the gateway knows about one Triton server."""

    url: str
    client: grpcclient.InferenceServerClient
    healthy: bool = True
    loaded: set[str] = field(default_factory=set)
    """Model names loaded on this server."""
    loading: set[str] = field(default_factory=set)
    in_flight: dict[str, int] = field(default_factory=dict)
    last_error: str = ""
    failures: int = 0

    def total_in_flight(self) -> int:
        """Requests this server is working on."""
        return sum(self.in_flight.values())


def to_gateway_error(exc: InferenceServerException, model: str) -> GatewayError:
    """Map a Triton error to the gateway's table by its status code."""
    status = str(exc.status() or "")
    text = f"Triton ({status or 'no status'}) for {model}: {exc.message()}"
    if status in _TIMEOUT:
        return BackendTimeoutError(text)
    if status in _BUSY:
        return CapacityExhaustedError(text)
    if status in _BAD_INPUT:
        return InvalidRequestError(text)
    return VariantUnavailableError(text)


class TritonBackend:
    """A ``Backend`` over Triton replicas, with optional fallback to another backend.

    Args:
        urls: gRPC ``host:port`` of each Triton replica.
        explicit_model_control: the servers run with ``--model-control-mode=explicit``, so
            ``load``/``unload`` call Triton's repository API; otherwise Triton already holds
            its whole repository and ``load`` only checks readiness.
        fallback: backend used when no replica can serve a request (e.g. the embedded one).
        probe_interval_s: how often unhealthy (and healthy) servers are probed.
        call_timeout_s: timeout of control calls (load, unload, health).
        clock: monotonic time source.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        explicit_model_control: bool = True,
        fallback: Backend | None = None,
        probe_interval_s: float = 1.0,
        call_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("TritonBackend needs at least one server URL")
        self.servers = [ServerState(u, grpcclient.InferenceServerClient(u)) for u in urls]
        self.explicit = explicit_model_control
        self.fallback = fallback
        self.probe_interval_s = probe_interval_s
        self.call_timeout_s = call_timeout_s
        self.clock = clock
        self.wanted: dict[str, ModelRef] = {}
        """Models the gateway wants held; reloaded on a server when it recovers."""
        self.fallback_runs = 0
        self.on_health_change: Callable[[str, bool], None] | None = None
        self._probe_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start_probing(self) -> None:
        """Start the background health probe (idempotent)."""
        if self._probe_task is None:
            self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval_s)
            await asyncio.gather(*(self._probe(s) for s in self.servers))

    async def _probe(self, server: ServerState) -> None:
        try:
            live = await server.client.is_server_live(client_timeout=self.probe_interval_s)
        except InferenceServerException as exc:
            live, server.last_error = False, str(exc.message())
        if live and not server.healthy:
            log.info("triton %s answers again; reloading %d models", server.url, len(self.wanted))
            server.loaded.clear()
            for ref in list(self.wanted.values()):
                with contextlib.suppress(GatewayError):
                    await self._load_on(server, ref)
            self._set_health(server, True)
        elif not live and server.healthy:
            self._set_health(server, False)

    def _set_health(self, server: ServerState, healthy: bool) -> None:
        server.healthy = healthy
        if not healthy:
            server.loaded.clear()
            log.warning("triton %s marked unhealthy: %s", server.url, server.last_error)
        if self.on_health_change is not None:
            self.on_health_change(server.url, healthy)

    async def close(self) -> None:
        """Stop probing and close every channel."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probe_task
            self._probe_task = None
        for server in self.servers:
            await server.client.close()
        if self.fallback is not None:
            await self.fallback.close()

    # -- models ----------------------------------------------------------------------------

    async def _load_on(self, server: ServerState, ref: ModelRef) -> None:
        name = ref.model_name
        server.loading.add(name)
        try:
            if self.explicit:
                await server.client.load_model(name, client_timeout=self.call_timeout_s)
            ready = await server.client.is_model_ready(name, client_timeout=self.call_timeout_s)
            if not ready:
                raise VariantUnavailableError(f"Triton {server.url} did not make {name} ready")
            server.loaded.add(name)
        except InferenceServerException as exc:
            server.last_error = str(exc.message())
            raise to_gateway_error(exc, name) from exc
        finally:
            server.loading.discard(name)

    async def load(self, ref: ModelRef) -> None:
        """Load ``ref`` on every healthy server; ready once one server holds it."""
        self.wanted[ref.model_name] = ref
        results = await asyncio.gather(
            *(self._load_on(s, ref) for s in self.servers if s.healthy), return_exceptions=True
        )
        if not any(ref.model_name in s.loaded for s in self.servers):
            errors = "; ".join(str(r) for r in results if isinstance(r, BaseException))
            if self.fallback is not None:
                await self.fallback.load(ref)
                log.warning(
                    "%s not on any Triton server (%s); fallback holds it", ref.model_name, errors
                )
                return
            raise VariantUnavailableError(f"no Triton server loaded {ref.model_name}: {errors}")
        if self.fallback is not None:
            # Warm the fallback too, so failover within one deadline needs no model load.
            await self.fallback.load(ref)

    async def unload(self, ref: ModelRef) -> None:
        """Unload ``ref`` everywhere once its in-flight requests have finished."""
        self.wanted.pop(ref.model_name, None)
        for server in self.servers:
            if ref.model_name not in server.loaded:
                continue
            server.loaded.discard(ref.model_name)  # no new requests go there
            while server.in_flight.get(ref.model_name, 0) > 0:
                await asyncio.sleep(0.01)
            if self.explicit and server.healthy:
                try:
                    await server.client.unload_model(
                        ref.model_name, client_timeout=self.call_timeout_s
                    )
                except InferenceServerException as exc:
                    log.warning(
                        "unloading %s from %s: %s", ref.model_name, server.url, exc.message()
                    )
        if self.fallback is not None:
            await self.fallback.unload(ref)

    def is_ready(self, ref: ModelRef) -> bool:
        """Ready on a healthy server, or on the fallback."""
        if any(s.healthy and ref.model_name in s.loaded for s in self.servers):
            return True
        return self.fallback is not None and self.fallback.is_ready(ref)

    def queue_depth(self, ref: ModelRef) -> int:
        """Requests of ``ref`` in flight at the Triton servers (their queue is not visible)."""
        return sum(s.in_flight.get(ref.model_name, 0) for s in self.servers)

    def healthy_servers(self) -> list[str]:
        """URLs of the servers currently considered healthy."""
        return [s.url for s in self.servers if s.healthy]

    # -- inference -------------------------------------------------------------------------

    def _pick(self, name: str, tried: set[str]) -> ServerState | None:
        options = [s for s in self.servers if s.healthy and name in s.loaded and s.url not in tried]
        return min(options, key=ServerState.total_in_flight, default=None)

    async def run(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Run on the least-busy healthy replica; fail over within the same deadline."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        tried: set[str] = set()
        last: GatewayError | None = None
        while (server := self._pick(ref.model_name, tried)) is not None:
            tried.add(server.url)
            remaining = None if deadline is None else deadline - self.clock()
            if remaining is not None and remaining <= 0:
                raise BackendTimeoutError(f"deadline passed before {ref.model_name} ran")
            try:
                return await self._infer(server, ref.model_name, inputs, remaining)
            except InferenceServerException as exc:
                status = str(exc.status() or "")
                error = to_gateway_error(exc, ref.model_name)
                if status in _SERVER_DOWN or (status in _TIMEOUT and await self._dead(server)):
                    server.last_error = str(exc.message())
                    self._set_health(server, False)
                    last = error
                    continue
                if status in _NOT_LOADED:
                    server.loaded.discard(ref.model_name)
                    last = error
                    continue
                raise error from exc
        if self.fallback is not None and self.fallback.is_ready(ref):
            self.fallback_runs += 1
            remaining = None if deadline is None else max(deadline - self.clock(), 0.0)
            return await self.fallback.run(ref, inputs, remaining)
        raise last or VariantUnavailableError(f"no healthy Triton server holds {ref.model_name}")

    async def _dead(self, server: ServerState) -> bool:
        """After a timeout: does the server still answer a liveness check quickly?"""
        try:
            return not await server.client.is_server_live(client_timeout=0.5)
        except InferenceServerException:
            return True

    async def _infer(
        self, server: ServerState, name: str, inputs: Mapping[str, Tensor], timeout_s: float | None
    ) -> dict[str, Tensor]:
        infer_inputs = []
        for key, value in inputs.items():
            array = np.ascontiguousarray(value)
            tensor = grpcclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        server.in_flight[name] = server.in_flight.get(name, 0) + 1
        try:
            result = await server.client.infer(name, infer_inputs, client_timeout=timeout_s)
        finally:
            server.in_flight[name] -= 1
        response = result.get_response()
        return {out.name: result.as_numpy(out.name) for out in response.outputs}
