"""The whole gateway in one asyncio loop: registry, backend, data plane, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Iterator

import grpc
import uvicorn
from prometheus_client import CollectorRegistry

from gateway.backends.base import Backend, ModelRef
from gateway.backends.embedded import EmbeddedBackend
from gateway.backends.triton import TritonBackend
from gateway.config import GatewaySettings
from gateway.dataplane import DataPlane
from gateway.grpc.server import ADMISSION_HEADROOM, start_grpc_server
from gateway.http.app import create_app
from gateway.manifest import split_model_name
from gateway.metrics import GatewayMetrics
from gateway.registry import Registry
from gateway.routing.live import Clock
from gateway.routing.shared import SharedTable
from gateway.security import Security
from gateway.tls import triton_channel_credentials

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """Uvicorn without its own signal handling: the gateway owns shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not listening yet).

    ``reuse_port`` lets the gateway's worker processes bind the same port; the kernel then
    spreads incoming connections over them.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it a response written in two parts waits for a delayed ACK (~40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _pool_threads(settings: GatewaySettings) -> int:
    """Threads of one worker's compute pool.

    The cores' worth it may use, or its share of the runs the Triton servers take.
    """
    if settings.backend == "triton":
        runs = len(settings.triton_urls) * settings.triton_runs_per_server
        return max(1, -(-runs // settings.workers))
    return settings.task_threads


class Gateway:
    """Starts and stops everything one gateway process runs.

    ``registry``, ``backend`` and ``clock`` are seams: tests pass a fresh Prometheus
    registry, and any backend can replace the one the settings describe (``backend:
    embedded`` or ``triton``). ``table`` is the live load shared with the other worker
    processes, when this is one of several (``workers``); they then share the ports.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        *,
        registry: CollectorRegistry | None = None,
        backend: Backend | None = None,
        clock: Clock = time.monotonic,
        table: SharedTable | None = None,
    ) -> None:
        """Prepare the gateway; nothing starts until :meth:`start`."""
        self.settings = settings
        self.metrics = GatewayMetrics(registry or CollectorRegistry())
        self.backend: Backend = backend or self._backend(settings, clock)
        self.registry = Registry(
            settings.repository,
            self.backend,
            self.metrics,
            unload_grace_s=settings.request_timeout_s,
        )
        self.dataplane = DataPlane(
            self.registry,
            self.backend,
            settings,
            self.metrics,
            pool_threads=_pool_threads(settings),
            table=table,
            clock=clock,
        )
        self.metrics.track(self.dataplane.variant_states)
        self.security = Security.from_settings(settings, self.metrics)
        self.http_port = 0
        self.grpc_port = 0
        self._grpc: grpc.aio.Server | None = None
        self._http: _EmbeddedUvicorn | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._secrets_task: asyncio.Task[None] | None = None

    def _embedded(self, settings: GatewaySettings, clock: Clock) -> EmbeddedBackend:
        return EmbeddedBackend(
            intra_op_threads=settings.intra_op_threads,
            providers=settings.execution_providers,
            on_batch=self._record_batch,
        )

    def _backend(self, settings: GatewaySettings, clock: Clock) -> Backend:
        if settings.backend == "embedded":
            return self._embedded(settings, clock)
        # No channel opens here: gRPC aio objects belong to the loop that creates them, and
        # the loop that will serve is the one running start().
        return TritonBackend(
            settings.triton_urls,
            metrics_urls=settings.triton_metrics_urls,
            explicit_model_control=settings.triton_explicit_model_control,
            gpu_memory_budget_bytes=settings.triton_gpu_memory_budget_bytes,
            fallback=self._embedded(settings, clock) if settings.triton_fallback_embedded else None,
            channels_per_server=settings.triton_channels_per_server,
            probe_interval_s=settings.triton_probe_interval_s,
            load_timeout_s=settings.triton_load_timeout_s,
            demand_window_s=settings.triton_demand_window_s,
            breaker_policy=settings.breaker_policy,
            channel_credentials=triton_channel_credentials(settings),
            metrics=self.metrics,
            clock=clock,
        )

    def _record_batch(self, ref: ModelRef, rows: int) -> None:
        family, variant = split_model_name(ref.model_name)
        self.metrics.batch_size.labels(family, variant or "").observe(rows)

    async def start(self) -> None:
        """Load the repository, then start both servers; ports are known afterwards.

        Raises:
            OSError: A port could not be bound (everything started is stopped again).
        """
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        s = self.settings
        await self.backend.start()
        await self.registry.refresh()
        self.dataplane.start()  # after loading, which stalls the loop as no request will
        shared = s.workers > 1
        self._grpc, self.grpc_port = await start_grpc_server(
            self.dataplane,
            s.host,
            s.grpc_port,
            s.max_payload_bytes,
            reuse_port=shared,
            max_concurrent_calls=s.max_in_flight + ADMISSION_HEADROOM,
            credentials=self.security.grpc_credentials(),
            interceptors=self.security.grpc_interceptors(),
        )
        sock = bind(s.host, s.http_port, reuse_port=shared)
        self.http_port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            self.security.http_app(create_app(self.dataplane, self.metrics, s)),
            log_level=s.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=max(1, int(s.shutdown_grace_s)),
            **self.security.uvicorn_options(),
        )
        self._http = _EmbeddedUvicorn(config)
        self._http_task = asyncio.create_task(self._http.serve(sockets=[sock]))
        while not self._http.started:
            if self._http_task.done():
                self._http_task.result()  # re-raise why it stopped
                raise RuntimeError("the HTTP server stopped during startup")
            await asyncio.sleep(0.01)
        if s.reload_interval_s > 0:
            self._watch_task = asyncio.create_task(self.registry.watch(s.reload_interval_s))
        self._secrets_task = asyncio.create_task(self.security.watch())
        log.info(
            "gateway serving http=%s:%d grpc=%s:%d", s.host, self.http_port, s.host, self.grpc_port
        )

    async def stop(self) -> None:
        """Stop accepting requests, let in-flight ones finish (up to the grace), release all."""
        grace_s = self.settings.shutdown_grace_s
        for task in (self._watch_task, self._secrets_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        waits = []
        if self._grpc is not None:
            waits.append(self._grpc.stop(grace_s))
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            waits.append(self._http_task)
        await asyncio.gather(*waits, return_exceptions=True)
        await self.registry.close()
        await self.dataplane.close()
        await self.backend.close()
        log.info("gateway stopped")
