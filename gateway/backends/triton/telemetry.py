"""The Triton backend's Prometheus series, through one helper that builds each label once.

Call sites name a server and a Triton model name; the helper turns the model name into the
``model``/``variant`` labels (cached) and writes the series defined in
:class:`gateway.metrics.GatewayMetrics`. Without metrics it records into a private registry
nobody scrapes, so no call site checks whether metrics exist.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry

from gateway.manifest import split_model_name
from gateway.metrics import GatewayMetrics

FALLBACK = "embedded"
"""The ``server`` label of runs served by the fallback backend."""


class TritonTelemetry:
    """Health, placement and run metrics of the Triton backend."""

    def __init__(self, metrics: GatewayMetrics | None) -> None:
        """Write into ``metrics``, or into a private registry when it is None."""
        self._metrics = metrics if metrics is not None else GatewayMetrics(CollectorRegistry())
        self._labels: dict[str, tuple[str, str]] = {}

    def _model(self, name: str) -> tuple[str, str]:
        """``(model, variant)`` labels of a Triton model name, built once per name."""
        labels = self._labels.get(name)
        if labels is None:
            family, variant = split_model_name(name)
            labels = self._labels[name] = (family, variant or "")
        return labels

    def server_healthy(self, server: str, healthy: bool) -> None:
        """Whether ``server`` answers its probes."""
        self._metrics.triton_server_healthy.labels(server).set(1 if healthy else 0)

    def budget(self, server: str, budget_bytes: int) -> None:
        """The GPU memory ``server`` may give to variants."""
        self._metrics.triton_gpu_memory_budget_bytes.labels(server).set(budget_bytes)

    def residency(
        self, server: str, resident_bytes: int, resident: Iterable[tuple[str, bool]]
    ) -> None:
        """Bytes ``server`` holds, and per model whether it takes requests there."""
        self._metrics.triton_resident_bytes.labels(server).set(resident_bytes)
        for name, loaded in resident:
            self._metrics.triton_variant_resident.labels(server, *self._model(name)).set(
                1 if loaded else 0
            )

    def load(self, server: str, name: str, reason: str, outcome: str) -> None:
        """A load of ``name`` on ``server`` finished (``outcome`` ok or failed)."""
        self._metrics.triton_loads_total.labels(server, *self._model(name), reason, outcome).inc()

    def unload(self, server: str, name: str, reason: str) -> None:
        """``name`` left ``server`` (evicted or retired)."""
        self._metrics.triton_unloads_total.labels(server, *self._model(name), reason).inc()

    def run(self, server: str, name: str, outcome: str) -> None:
        """One graph run on ``server`` (or :data:`FALLBACK`): ok, failover or error."""
        self._metrics.triton_runs_total.labels(server, *self._model(name), outcome).inc()

    def queue_time(self, server: str, name: str, seconds: float) -> None:
        """Mean time a request waited in ``server``'s queue between two metrics polls."""
        self._metrics.triton_queue_seconds.labels(server, *self._model(name)).set(seconds)
