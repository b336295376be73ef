"""Live load: requests admitted per variant, and each variant's service-time model.

Fed by the data plane as requests are admitted and answered; read when routing. Both live
in the workers' shared table (:mod:`gateway.routing.shared`), so with several worker
processes each decision counts every worker's requests and learns from every worker's runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway.manifest import FamilyManifest, Variant
from gateway.routing.service_time import ServiceModel, fit_profile
from gateway.routing.shared import IN_FLIGHT, QUEUED, SharedLearning, SharedTable

TOTAL = "*"
"""The table column counting every variant's requests together."""

Clock = Callable[[], float]
"""Monotonic seconds."""


class LiveLoad:
    """Requests admitted and not yet answered, per variant model name and in all.

    In-flight counts change only on the event loop's thread; queue counts change under the
    task pool's lock. Reads sum every worker.
    """

    def __init__(self, table: SharedTable | None = None) -> None:
        """Count into ``table`` (default: a private one, for a single worker)."""
        self.table = table or SharedTable()
        self._total = self.table.column(TOTAL)

    def begin(self, key: str) -> None:
        """A request was admitted to variant ``key``."""
        self.table.add(self.table.column(key), IN_FLIGHT, 1)
        self.table.add(self._total, IN_FLIGHT, 1)

    def end(self, key: str) -> None:
        """A request on ``key`` was answered (or failed); counts never go below zero."""
        column = self.table.column(key)
        if self.table.own(column, IN_FLIGHT) > 0:
            self.table.add(column, IN_FLIGHT, -1)
            self.table.add(self._total, IN_FLIGHT, -1)

    def in_flight(self, key: str) -> int:
        """Requests currently admitted to ``key`` by every worker."""
        return int(self.table.total(self.table.column(key), IN_FLIGHT))

    @property
    def total(self) -> int:
        """Requests currently admitted to any variant by every worker."""
        return int(self.table.total(self._total, IN_FLIGHT))

    def queue_changed(self, key: str, delta: int) -> None:
        """Jobs of ``key`` waiting in this worker's pool went up or down by ``delta``."""
        self.table.add(self.table.column(key), QUEUED, delta)

    def queued(self, key: str) -> int:
        """Jobs of ``key`` waiting in every worker's pool."""
        return int(self.table.total(self.table.column(key), QUEUED))


class WorkRate:
    """Seconds of work run per second, smoothed over ``time_constant_s``.

    Against the compute's threads this is how busy it is, as measured (what runs took, not
    what their profiles claim), so it holds whatever the profiles say.
    """

    def __init__(self, clock: Clock, time_constant_s: float = 0.25) -> None:
        """Start at zero."""
        self._clock = clock
        self.time_constant_s = time_constant_s
        self._rate = 0.0
        self._at = clock()

    def _decayed(self, now: float) -> float:
        return self._rate * math.exp(-max(0.0, now - self._at) / self.time_constant_s)

    def add(self, work_s: float) -> None:
        """A run of ``work_s`` seconds ended now."""
        now = self._clock()
        self._rate = self._decayed(now) + work_s / self.time_constant_s
        self._at = now

    def per_s(self) -> float:
        """Seconds of work run per second, now."""
        return self._decayed(self._clock())


class ServiceModels:
    """One :class:`ServiceModel` per variant, rebuilt when its manifest entry changes."""

    def __init__(
        self,
        observed_weight: float,
        min_samples: int,
        table: SharedTable | None = None,
        *,
        stale_s: float = math.inf,
        clock: Clock = time.monotonic,
    ) -> None:
        """Blend observations in with ``observed_weight`` once ``min_samples`` are seen.

        Measurements are kept in ``table`` (shared by the workers; default: private) and
        fade over ``stale_s`` once no run refreshes them.
        """
        self.observed_weight = observed_weight
        self.min_samples = min_samples
        self.table = table or SharedTable()
        self.stale_s = stale_s
        self.clock = clock
        self._models: dict[str, tuple[Variant, ServiceModel]] = {}

    def get(self, manifest: FamilyManifest, variant: Variant) -> ServiceModel:
        """The model of ``variant``; a new manifest entry starts a new model."""
        known = self._models.get(variant.model_name)
        if known is not None and known[0] is variant:
            return known[1]
        if known is not None and known[0] == variant:  # a reload that left it unchanged
            self._models[variant.model_name] = (variant, known[1])
            return known[1]
        fit = fit_profile(variant.latency, variant.size_latency, manifest.profiled_item_size)
        # Measurements are kept per graph: a rebuilt variant starts learning afresh.
        graph = variant.artifacts[0].sha256[:16] if variant.artifacts else ""
        learning = SharedLearning(self.table, self.table.column(f"{variant.model_name}@{graph}"))
        model = ServiceModel(
            fit,
            observed_weight=self.observed_weight,
            min_samples=self.min_samples,
            learning=learning,
            stale_s=self.stale_s,
            clock=self.clock,
        )
        self._models[variant.model_name] = (variant, model)
        return model
