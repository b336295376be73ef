"""Admission: predict a request's completion on each variant, choose one, lease it, or shed.

On the event loop, per request, in microseconds. For every candidate variant the
prediction is the wait for the work ahead in the compute pool plus the variant's own run
(its service-time model at the concurrency it will run at); the selector ranks them
(:mod:`gateway.routing.selector`), and the backend leases the first that is resident. A
Triton backend within a GPU-memory budget may lease a resident, less accurate variant while
the chosen one loads (reason ``loading``), or make the request wait within its deadline.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.backends.base import Backend, Lease
from gateway.config import GatewaySettings
from gateway.errors import CapacityExhaustedError, VariantUnavailableError
from gateway.execution import PoolStats, TaskPool
from gateway.metrics import GatewayMetrics
from gateway.registry import ServedFamily, ServedVariant
from gateway.routing.live import Clock, LiveLoad, ServiceModels, WorkRate
from gateway.routing.loop_lag import LoopLag
from gateway.routing.selector import Estimate, select
from gateway.routing.service_time import Prediction, ServiceModel
from gateway.types import Budget, Selection

LOADING = "loading"
"""Selection reason: a more accurate variant fits but is still being loaded."""


@dataclass(frozen=True)
class Admission:
    """Where a request was admitted and what was predicted for it.

    Attributes:
        served: The variant it runs on.
        lease: The backend's lease on it (released when the request ends).
        model: That variant's service-time model (told how the run went).
        selection: What the response says about the choice.
        cost_s: Predicted median seconds of its run.
        tail_s: Predicted tail seconds of its run.
        measured_s: What measured runs say its run alone takes (None: too few runs).
        size: Its items' total size, when the family counts sizes.
        concurrency: Runs predicted to execute beside it, itself included.
    """

    served: ServedVariant
    lease: Lease
    model: ServiceModel
    selection: Selection
    cost_s: float
    tail_s: float
    measured_s: float | None
    size: float | None
    concurrency: int


class Admitter:
    """Chooses and leases the variant for each request, or refuses it."""

    def __init__(
        self,
        *,
        backend: Backend,
        pool: TaskPool,
        models: ServiceModels,
        live: LiveLoad,
        loop_lag: LoopLag,
        work_rate: WorkRate,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        clock: Clock,
    ) -> None:
        """Read the load from ``pool``, ``live``, ``loop_lag`` and ``work_rate``."""
        self.backend = backend
        self.pool = pool
        self.models = models
        self.live = live
        self.loop_lag = loop_lag
        self.work_rate = work_rate
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.lag_weight = settings.observed_weight

    def estimate(
        self,
        family: ServedFamily,
        served: ServedVariant,
        rows: int,
        size: float | None,
        pool: PoolStats,
    ) -> tuple[Estimate, ServiceModel, Prediction]:
        """Predict this request's run on one variant, with the pool as it is now."""
        model = self.models.get(family.manifest, served.variant)
        prediction = model.predict(rows, size, pool.concurrency_next)
        wait_s = pool.wait_s
        backend_queue = self.backend.queue_depth(served.ref)
        if backend_queue:
            wait_s += backend_queue * prediction.p50_s / rows / pool.threads
        estimate = Estimate(
            idle_p50_s=prediction.idle_p50_s,
            idle_p95_s=prediction.idle_p95_s,
            service_p95_s=prediction.p95_s,
            service_p50_s=prediction.p50_s,
            wait_s=wait_s,
            in_flight=self.live.in_flight(served.variant.model_name),
        )
        return estimate, model, prediction

    async def admit(
        self,
        family: ServedFamily,
        candidates: list[ServedVariant],
        budget: Budget,
        rows: int,
        size: float | None,
        pinned: bool,
        start_s: float,
        due_s: float,
    ) -> Admission:
        """Choose the variant, lease it and say why; shed or refuse if none fits."""
        pool = self.pool.stats(due_s)
        estimates: dict[str, Estimate] = {}
        models: dict[str, tuple[ServiceModel, Prediction]] = {}
        for served in candidates:
            key = served.variant.model_name
            estimate, model, prediction = self.estimate(family, served, rows, size, pool)
            estimates[key], models[key] = estimate, (model, prediction)
        try:
            choice = select(
                family.manifest.family,
                budget,
                [c.variant for c in candidates],
                estimates,
                max_in_flight_per_variant=self.settings.max_in_flight_per_variant,
                # Time spent so far, plus what it waited for the loop to get to it.
                elapsed_s=self.clock() - start_s + self.lag_weight * self.loop_lag.lag_s,
                pinned=pinned,
                utilization=self.work_rate.per_s() / pool.threads,
                target_utilization=self.settings.target_utilization,
                queue_headroom=self.settings.queue_headroom,
            )
        except CapacityExhaustedError:
            self.metrics.shed_total.labels(family.manifest.family, "variants").inc()
            raise
        by_name = {c.variant.name: c for c in candidates}
        ranked = [by_name[r.variant.name] for r in choice.ranked]
        self.backend.note_demand(ranked[0].ref)
        lease = await self.backend.acquire([c.ref for c in ranked], due_s - self.clock())
        i = next(i for i, c in enumerate(ranked) if c.ref == lease.ref)
        served, top = ranked[i], choice.ranked[i]
        reason, detail = choice.reason, choice.detail
        if i > 0:
            reason = LOADING
            detail = (
                f"{ranked[0].variant.name} is being loaded; {served.variant.name} serves meanwhile"
            )
        model, prediction = models[served.variant.model_name]
        selection = Selection(
            variant=served.variant.name,
            model_name=served.variant.model_name,
            reason=reason,
            detail=detail,
            predicted_latency_s=top.predicted_latency_s,
        )
        return Admission(
            served,
            lease,
            model,
            selection,
            prediction.p50_s,
            prediction.p95_s,
            prediction.measured_p50_s,
            size,
            pool.concurrency_next,
        )

    def holdable(
        self, family: ServedFamily, candidates: list[ServedVariant]
    ) -> list[ServedVariant]:
        """The candidates the backend could ever make resident."""
        holdable = [c for c in candidates if self.backend.can_hold(c.ref)]
        if not holdable:
            names = ", ".join(c.variant.name for c in candidates)
            raise VariantUnavailableError(
                f"no variant of '{family.manifest.family}' ({names}) fits the backend's "
                "GPU-memory budget"
            )
        return holdable
