"""Running an admitted request's task: on the event loop when it is cheap, else in the pool.

The task's graph calls go through the backend's runner for the request's lease, timed into
the variant's backend-latency histogram. A job for the pool carries when it is due, the
latest moment it may start (a hard budget never starts what cannot end in time) and how
its run costs grow with batching, so the pool can order, drop and batch it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Mapping
from typing import Any

from gateway.admission import Admission
from gateway.backends.base import Backend
from gateway.config import GatewaySettings
from gateway.errors import BackendTimeoutError, CapacityExhaustedError
from gateway.execution import Job, TaskPool, run_inline
from gateway.metrics import GatewayMetrics, VariantMetrics
from gateway.routing.live import Clock, LiveLoad, WorkRate
from gateway.routing.loop_lag import LoopLag
from gateway.tasks.base import MAIN_GRAPH, Tensor
from gateway.types import Budget, NamedTensor


class TaskRunner:
    """Runs admitted requests' tasks and accounts for their load."""

    def __init__(
        self,
        *,
        backend: Backend,
        pool: TaskPool,
        live: LiveLoad,
        loop_lag: LoopLag,
        work_rate: WorkRate,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        clock: Clock,
    ) -> None:
        """Count runs into ``live`` and ``work_rate``; queue them on ``pool``."""
        self.backend = backend
        self.pool = pool
        self.live = live
        self.loop_lag = loop_lag
        self.work_rate = work_rate
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self._inline_limit_s = settings.inline_task_max_ms / 1000.0
        self._lag_weight = settings.observed_weight

    async def run(
        self,
        admission: Admission,
        items: list[Any],
        options: Mapping[str, Any],
        budget: Budget,
        start_s: float,
        due_s: float,
        deadline_s: float,
        bound: VariantMetrics,
    ) -> list[NamedTensor]:
        """Run the task for ``items``: inline if it is cheap, else as a job of the pool."""
        served, lease = admission.served, admission.lease
        model, concurrency = admission.model, admission.concurrency
        io = served.io
        assert io is not None
        loop = asyncio.get_running_loop()
        runner = self.backend.graph_runner(lease, loop)
        backend_seconds = bound.backend_seconds
        clock = self.clock

        def run_graph(
            inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
        ) -> Mapping[str, Tensor]:
            t0 = clock()
            try:
                return runner(inputs, deadline_s - t0, graph)
            finally:
                backend_seconds.observe(clock() - t0)

        def run_task(batch_items: list[Any]) -> list[Any]:
            return io.run(batch_items, run_graph, options)

        work_rate = self.work_rate

        def observe(rows: int, size: float | None, seconds: float, running: int) -> None:
            # The variant learns its run time; the compute counts the time it was busy.
            model.observe(rows, size, seconds, running)
            work_rate.add(seconds)

        key = served.variant.model_name
        max_rows = max(1, served.ref.max_batch_size)
        self.live.begin(key)
        try:
            if self.inline(admission, len(items)):
                results = run_inline(items, run_task, max_rows, admission.size, observe, clock)
                return io.pack(results)
            # The last moment the job may start and still be answered in time: its tail, and
            # the loop's lag to get the answer out, within the deadline (or the budget,
            # unless late answers help).
            end_by_s = due_s if budget.hard is not False else deadline_s
            start_by_s = end_by_s - admission.tail_s - self._lag_weight * self.loop_lag.lag_s
            job = Job(
                key=(key, lease.holder, _options_key(options), io.batch_key(items)),
                items=items,
                run=run_task,
                cost_s=admission.cost_s,
                tail_s=admission.tail_s,
                max_rows=max_rows,
                due_s=due_s,
                start_by_s=start_by_s,
                future=loop.create_future(),
                loop=loop,
                label=key,
                size=admission.size,
                observe=observe,
                run_tail_s=lambda rows, size: model.p95_s(rows, size, concurrency),
            )
            return io.pack(await self.queued(job, bound, start_s, deadline_s))
        finally:
            self.live.end(key)

    def inline(self, admission: Admission, rows: int) -> bool:
        """Whether to run a job on the event loop itself: cheap, nothing queued, loop free.

        Two thread hand-offs cost more than a sub-millisecond task; a longer one would hold
        up every other request on the loop, so a variant runs inline only once its own
        measured runs (in the pool) show it is cheap, whatever its profile claims, and only
        while the loop keeps up: a busy loop must route and shed, not compute.
        """
        if self._inline_limit_s <= 0 or not self.backend.runs_in_caller:
            return False
        measured_s = admission.measured_s
        return (
            measured_s is not None
            and measured_s <= self._inline_limit_s
            and self.loop_lag.lag_s < self._inline_limit_s
            and not self.pool.has_queue()
        )

    async def queued(
        self, job: Job, bound: VariantMetrics, start_s: float, deadline_s: float
    ) -> list[Any]:
        """Hand ``job`` to the pool and wait for its results within the deadline."""
        if not self.pool.submit(job):
            self.metrics.shed_total.labels(bound.model, "queue").inc()
            raise CapacityExhaustedError(
                f"{job.label}: the task queue is full ({self.settings.max_queue} jobs waiting)"
            )
        try:
            return await asyncio.wait_for(job.future, max(0.0, deadline_s - self.clock()))
        except TimeoutError:
            job.abandoned = True
            raise BackendTimeoutError(
                f"{job.label} gave no result within the request's deadline "
                f"({(deadline_s - start_s) * 1000:.0f} ms)"
            ) from None
        except BackendTimeoutError:
            self.metrics.shed_total.labels(bound.model, "late").inc()
            raise
        except asyncio.CancelledError:
            job.abandoned = True
            raise


def _options_key(options: Mapping[str, Any]) -> Hashable:
    try:
        return tuple(sorted(options.items()))
    except TypeError:  # unhashable or unorderable option values: never share a run
        return object()
