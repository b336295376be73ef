"""``TritonBackend``: the ``Backend`` the data plane sees, over the package's parts.

It wires the replicas (:mod:`.replica`, :mod:`.fleet`), their probes (:mod:`.health`), the
placement controller (:mod:`.placement`) and the scheduler (:mod:`.scheduler`) together and
owns their lifecycle; each protocol method delegates to the part that owns the concern.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import grpc

from gateway.backends.base import Backend, GraphRunner, Lease, ModelRef, loop_runner
from gateway.backends.runtimes import runtimes_of
from gateway.backends.triton.fleet import Fleet
from gateway.backends.triton.health import HealthMonitor
from gateway.backends.triton.placement import PlacementController
from gateway.backends.triton.scheduler import Scheduler
from gateway.backends.triton.telemetry import TritonTelemetry
from gateway.faults import BreakerPolicy
from gateway.layout import Runtime, runtime_of
from gateway.metrics import GatewayMetrics
from gateway.tasks.base import MAIN_GRAPH, Tensor


class TritonBackend:
    """A ``Backend`` over Triton replicas that places variants itself, with a fallback.

    Nothing touches the network until :meth:`start`, which must run on the event loop that
    will use the backend (gRPC aio channels belong to the loop that created them). Triton
    runs ONNX graphs and TensorRT plans; the fallback takes only the runtimes it runs.
    """

    runs_in_caller = False
    """Graph calls go through the event loop, so task code must not run on it."""
    runtimes: frozenset[Runtime] = frozenset({"onnx", "tensorrt"})
    """Graph runtimes Triton runs (the fallback only takes the ones it runs itself)."""

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
        breaker_policy: BreakerPolicy | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
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
            probe_interval_s: Seconds between liveness probes (and between repository
                reads and metrics polls); also a probe's timeout.
            load_timeout_s: Seconds one model load may take.
            demand_window_s: Time constant of the decaying demand counts.
            breaker_policy: Each server's circuit breaker (``gateway.faults``).
            channel_credentials: TLS credentials of the channels (None: plaintext).
            metrics: Receives health, placement and run metrics.
            clock: Monotonic seconds.
        """
        if not urls:
            raise ValueError("TritonBackend needs at least one server URL")
        if metrics_urls and len(metrics_urls) != len(urls):
            raise ValueError("give one metrics URL per server, or none")
        if gpu_memory_budget_bytes is not None and not explicit_model_control:
            raise ValueError("a GPU-memory budget needs explicit model control")
        self.fallback = fallback
        self.budget_bytes = gpu_memory_budget_bytes
        self.channels_per_server = channels_per_server
        self.channel_credentials = channel_credentials
        self.telemetry = TritonTelemetry(metrics)
        self.fleet = Fleet(urls, metrics_urls, clock)
        self.placement = PlacementController(
            self.fleet,
            self.telemetry,
            explicit=explicit_model_control,
            budget_bytes=gpu_memory_budget_bytes,
            load_timeout_s=load_timeout_s,
            rpc_timeout_s=max(probe_interval_s, 5.0),
            demand_window_s=demand_window_s,
        )
        self.health = HealthMonitor(self.fleet, self.placement, self.telemetry, probe_interval_s)
        self.scheduler = Scheduler(
            self.fleet,
            self.placement,
            self.health,
            self.telemetry,
            fallback,
            load_timeout_s,
            breaker_policy=breaker_policy,
            metrics=metrics,
        )
        self._started = False
        self._start_lock: asyncio.Lock | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channels, probe every server once and start the background probes."""
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            self.fleet.open()
            for replica in self.fleet:
                replica.open(self.channels_per_server, self.channel_credentials)
                self.telemetry.server_healthy(replica.url, False)
                if self.budget_bytes is not None:
                    self.telemetry.budget(replica.url, self.budget_bytes)
            await asyncio.gather(*(self.health.probe(r) for r in self.fleet))
            for replica in self.fleet:
                self.fleet.spawn(self.health.run(replica))
                self.fleet.spawn(self.health.watch(replica))
            self._started = True

    async def close(self) -> None:
        """Stop probes and placements, close every channel and the fallback."""
        await self.fleet.stop()
        for replica in self.fleet:
            await replica.close()
        self._started = False
        if self.fallback is not None:
            await self.fallback.close()

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
        if ref.graphs:  # its graphs are Triton models of their own, placed as one
            models = tuple(g.model_name for g in ref.graphs)
            for replica in self.fleet:
                replica.graphs[ref.model_name] = models
        await self.placement.register(ref)
        fallback = self._fallback_for(ref)
        if fallback is not None:
            # Warm, so failing over within a deadline needs no model load.
            await fallback.load(ref)
        await self.placement.make_servable(ref, has_fallback=fallback is not None)

    def _fallback_for(self, ref: ModelRef) -> Backend | None:
        """The fallback backend if it runs ``ref``'s graph (not a TensorRT plan on ONNX)."""
        if self.fallback is None or runtime_of(ref.graph_path) not in runtimes_of(self.fallback):
            return None
        return self.fallback

    async def unload(self, ref: ModelRef) -> None:
        """Stop serving ``ref``: unloaded everywhere once its requests have finished."""
        fallback = self._fallback_for(ref)
        if fallback is not None:
            await fallback.unload(ref)
        await self.placement.retire(ref)

    def is_ready(self, ref: ModelRef) -> bool:
        """Resident on a healthy server, or ready on the fallback."""
        name = ref.model_name
        return any(r.serves(name) for r in self.fleet) or self.scheduler.fallback_ready(ref)

    def queue_depth(self, ref: ModelRef) -> int:
        """Runs of ``ref`` waiting at the servers, as Triton's metrics and our counts say.

        Per server the larger of: runs sent beyond its model instances, and Triton's own
        queue (pending count, or queue time over execution time) from the last poll.
        """
        name = ref.model_name
        depth = sum(r.queue_depth(name) for r in self.fleet if r.serves(name))
        if self.fallback is not None:
            depth += self.fallback.queue_depth(ref)
        return depth

    async def run(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Tensor],
        timeout_s: float | None = None,
        graph: str = MAIN_GRAPH,
    ) -> dict[str, Tensor]:
        """Run ``graph`` on the least busy healthy replica; fail over within the deadline."""
        return await self.scheduler.run(ref, inputs, timeout_s, prefer="", graph=graph)

    # -- placement and leases --------------------------------------------------------------

    def can_hold(self, ref: ModelRef) -> bool:
        """Within a server's budget (or no budget), or a fallback holds it."""
        if self._fallback_for(ref) is not None or self.budget_bytes is None:
            return True
        return ref.gpu_memory_bytes <= self.budget_bytes

    def is_serving(self) -> bool:
        """A server is healthy, or a fallback serves."""
        return self.fallback is not None or self.fleet.any_healthy()

    def note_demand(self, ref: ModelRef) -> None:
        """Count demand for ``ref`` and start loading it where the plan allows."""
        self.placement.note_demand(ref)

    async def acquire(self, refs: Sequence[ModelRef], timeout_s: float) -> Lease:
        """Lease the first resident of ``refs``, loading one if none is (see the protocol)."""
        return await self.scheduler.acquire(refs, timeout_s)

    def release(self, lease: Lease) -> None:
        """End ``lease``; a variant waiting to be evicted may go once its last lease ends."""
        self.scheduler.release(lease)

    async def run_leased(
        self,
        lease: Lease,
        inputs: Mapping[str, Tensor],
        timeout_s: float | None = None,
        graph: str = MAIN_GRAPH,
    ) -> dict[str, Tensor]:
        """Run ``graph`` on the lease's server while it serves the variant; else as ``run``."""
        return await self.scheduler.run(
            lease.ref, inputs, timeout_s, prefer=lease.holder, graph=graph
        )

    def graph_runner(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> GraphRunner:
        """Run the lease's graph from a worker thread, through this backend on ``loop``."""
        return loop_runner(self.run_leased, lease, loop)
