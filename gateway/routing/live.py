"""Live load: requests admitted per variant, and each variant's service-time model.

Fed by the data plane as requests are admitted and answered; read when routing. Time comes
from an injected clock, so tests can move it by hand.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.manifest import FamilyManifest, Variant
from gateway.routing.service_time import ServiceModel, fit_profile

Clock = Callable[[], float]
"""Monotonic seconds."""


class LiveLoad:
    """Requests admitted and not yet answered, per variant model name and in all.

    Only the event loop's thread updates and reads it.
    """

    def __init__(self) -> None:
        """Start with nothing in flight."""
        self._in_flight: dict[str, int] = {}
        self.total = 0

    def begin(self, key: str) -> None:
        """A request was admitted to variant ``key``."""
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        self.total += 1

    def end(self, key: str) -> None:
        """A request on ``key`` was answered (or failed)."""
        self._in_flight[key] = max(0, self._in_flight.get(key, 0) - 1)
        self.total = max(0, self.total - 1)

    def in_flight(self, key: str) -> int:
        """Requests currently admitted to ``key``."""
        return self._in_flight.get(key, 0)


class ServiceModels:
    """One :class:`ServiceModel` per variant, rebuilt when its manifest entry changes."""

    def __init__(self, observed_weight: float, min_samples: int) -> None:
        """Blend observations in with ``observed_weight`` once ``min_samples`` are seen."""
        self.observed_weight = observed_weight
        self.min_samples = min_samples
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
        model = ServiceModel(
            fit, observed_weight=self.observed_weight, min_samples=self.min_samples
        )
        self._models[variant.model_name] = (variant, model)
        return model
