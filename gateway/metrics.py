"""Every Prometheus series the gateway exports, in one class with an injected registry.

Names carry the ``gateway_`` prefix and base units; labels are bounded: ``model`` is a
served family (or ``_unknown``), ``variant`` a variant name of it (or empty before routing),
``code`` a gRPC status name, ``reason`` a selection reason code. Dashboards and alert rules
query only what is defined here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from gateway.manifest import Variant

UNKNOWN_MODEL = "_unknown"
"""The ``model`` label of requests naming no served family, so labels stay bounded."""

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def multiprocess_dir() -> str:
    """Where worker processes keep their series (set by the supervisor), or ""."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


@dataclass(frozen=True)
class VariantState:
    """A published variant as a scrape sees it.

    Attributes:
        model: The family.
        variant: Its manifest entry.
        ready: Loaded and servable.
        in_flight: Requests admitted to it and not yet answered (every worker).
        queue_depth: Requests waiting for a worker, plus graph runs queued in the backend.
        quarantined: Taken out of routing after failed runs (this worker's view).
    """

    model: str
    variant: Variant
    ready: bool
    in_flight: int
    queue_depth: int
    quarantined: bool = False


_STATE_GAUGES: tuple[tuple[str, str, Callable[[VariantState], float | None]], ...] = (
    (
        "gateway_in_flight",
        "Requests admitted to a variant and not yet answered",
        lambda s: s.in_flight,
    ),
    (
        "gateway_queue_depth",
        "Requests waiting for a worker, plus graph runs waiting in the backend",
        lambda s: s.queue_depth,
    ),
    (
        "gateway_variant_ready",
        "1 when a published variant is loaded and servable, else 0",
        lambda s: 1 if s.ready else 0,
    ),
    (
        "gateway_variant_quarantined",
        "1 while a variant is quarantined after failed runs (routed around), else 0",
        lambda s: 1 if s.quarantined else 0,
    ),
    (
        "gateway_variant_size_bytes",
        "Bytes of the variant's graph file (manifest)",
        lambda s: s.variant.size_bytes,
    ),
    (
        "gateway_variant_parameters",
        "Parameters of the variant (manifest)",
        lambda s: s.variant.parameters,
    ),
    (
        "gateway_variant_quality",
        "Primary metric of the variant as higher-is-better points (manifest)",
        lambda s: s.variant.quality,
    ),
    (
        "gateway_variant_gpu_memory_bytes",
        "Device memory the variant needs (manifest)",
        lambda s: s.variant.gpu_memory_bytes,
    ),
    (
        "gateway_variant_profiled_p95_seconds",
        "Profiled p95 latency at batch 1, concurrency 1 (manifest)",
        lambda s: None if (p := s.variant.latency_at(1, 1)) is None else p.p95_s,
    ),
)
"""The per-variant gauges computed at scrape time: name, help, value of a state."""


class VariantStateCollector:
    """Per-variant gauges read when scraped, so a reload or another worker is always current."""

    def __init__(self, states: Callable[[], Iterable[VariantState]]) -> None:
        """Read the variants from ``states`` at each scrape."""
        self.states = states

    def describe(self) -> Iterator[Metric]:
        """The gauges' names, so registering checks them for clashes."""
        for name, help_text, _ in _STATE_GAUGES:
            yield GaugeMetricFamily(name, help_text, labels=["model", "variant"])

    def collect(self) -> Iterator[Metric]:
        """One sample per published variant for each gauge."""
        states = list(self.states())
        for name, help_text, value in _STATE_GAUGES:
            family = GaugeMetricFamily(name, help_text, labels=["model", "variant"])
            for state in states:
                number = value(state)
                if number is not None:
                    family.add_metric([state.model, state.variant.name], float(number))
            yield family


class VariantMetrics:
    """One variant's series with their labels bound once, so a request pays no lookups.

    Labels are bounded (served variants × codes, reasons, protocols); children are made on
    first use and kept.
    """

    def __init__(self, metrics: GatewayMetrics, model: str, variant: str) -> None:
        """Bind ``model`` and ``variant`` on every per-variant series of ``metrics``."""
        self._metrics = metrics
        self.model = model
        self.variant = variant
        self._backend_seconds: Any = None
        self._requests: dict[str, Any] = {}
        self._latency: dict[str, Any] = {}
        self._selections: dict[str, Any] = {}
        self._budget_misses: Any = None

    @property
    def backend_seconds(self) -> Any:
        """The graph-run latency histogram of this variant."""
        if self._backend_seconds is None:
            self._backend_seconds = self._metrics.backend_seconds.labels(self.model, self.variant)
        return self._backend_seconds

    def request(self, code: str) -> None:
        """Count a request that ended with gRPC status ``code``."""
        child = self._requests.get(code)
        if child is None:
            child = self._requests[code] = self._metrics.requests_total.labels(
                self.model, self.variant, code
            )
        child.inc()

    def latency(self, protocol: str, seconds: float) -> None:
        """Observe an answered request's end-to-end latency."""
        child = self._latency.get(protocol)
        if child is None:
            child = self._latency[protocol] = self._metrics.request_seconds.labels(
                self.model, self.variant, protocol
            )
        child.observe(seconds)

    def selection(self, reason: str) -> None:
        """Count a routing choice of this variant for ``reason``."""
        child = self._selections.get(reason)
        if child is None:
            child = self._selections[reason] = self._metrics.selections_total.labels(
                self.model, self.variant, reason
            )
        child.inc()

    def budget_miss(self) -> None:
        """Count an answer slower than its latency budget."""
        if self._budget_misses is None:
            self._budget_misses = self._metrics.budget_misses_total.labels(self.model, self.variant)
        self._budget_misses.inc()


class GatewayMetrics:
    """The gateway's metrics, registered in ``registry`` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        """Create and register every series."""
        self.registry = registry
        self.requests_total = Counter(
            "gateway_requests_total",
            "Requests by outcome (code is the gRPC status name, also for HTTP)",
            ["model", "variant", "code"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_seconds",
            "End-to-end latency of answered requests, arrival to response",
            ["model", "variant", "protocol"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.backend_seconds = Histogram(
            "gateway_backend_seconds",
            "Latency of one graph run in the backend, queueing included",
            ["model", "variant"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.batch_size = Histogram(
            "gateway_batch_size",
            "Rows per graph run in the embedded backend (requests batched together)",
            ["model", "variant"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.budget_requests_total = Counter(
            "gateway_budget_requests_total",
            "Answered requests that carried a latency budget",
            ["model"],
            registry=registry,
        )
        self.budget_misses_total = Counter(
            "gateway_budget_misses_total",
            "Answered requests slower than their latency budget",
            ["model", "variant"],
            registry=registry,
        )
        self.selections_total = Counter(
            "gateway_selections_total",
            "Variant choices by reason (anything but most-accurate/pinned is a downgrade)",
            ["model", "variant", "reason"],
            registry=registry,
        )
        self.shed_total = Counter(
            "gateway_shed_total",
            "Requests refused for capacity (gateway, variant or queue full)",
            ["model", "scope"],
            registry=registry,
        )
        self.registry_reloads_total = Counter(
            "gateway_registry_reloads_total",
            "Manifest (re)loads by outcome",
            ["outcome"],
            registry=registry,
        )
        # The Triton backend (servers are the configured URLs; "embedded" is the fallback).
        self.triton_server_healthy = Gauge(
            "gateway_triton_server_healthy",
            "1 while a Triton server answers its probes, else 0",
            ["server"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.triton_gpu_memory_budget_bytes = Gauge(
            "gateway_triton_gpu_memory_budget_bytes",
            "GPU memory a Triton server may give to variants (manifest figures)",
            ["server"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.triton_resident_bytes = Gauge(
            "gateway_triton_resident_bytes",
            "GPU memory of the variants a Triton server holds, loads or drains (manifest)",
            ["server"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.triton_variant_resident = Gauge(
            "gateway_triton_variant_resident",
            "1 while a variant is loaded and takes requests on a Triton server, else 0",
            ["server", "model", "variant"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.triton_loads_total = Counter(
            "gateway_triton_loads_total",
            "Variant loads on Triton servers by reason (startup, recovery, demand, urgent) "
            "and outcome (ok, failed)",
            ["server", "model", "variant", "reason", "outcome"],
            registry=registry,
        )
        self.triton_unloads_total = Counter(
            "gateway_triton_unloads_total",
            "Variant unloads on Triton servers by reason (evicted, retired)",
            ["server", "model", "variant", "reason"],
            registry=registry,
        )
        self.triton_runs_total = Counter(
            "gateway_triton_runs_total",
            "Graph runs sent to Triton servers (or the embedded fallback) by outcome "
            "(ok, failover: retried elsewhere, error)",
            ["server", "model", "variant", "outcome"],
            registry=registry,
        )
        self.triton_queue_seconds = Gauge(
            "gateway_triton_queue_seconds",
            "Mean time a request waited in a Triton server's queue, between its last two "
            "metrics polls",
            ["server", "model", "variant"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # Access checks and the files re-read for rotation (gateway/security.py).
        self.auth_rejections_total = Counter(
            "gateway_auth_rejections_total",
            "Calls refused by the access check (code: UNAUTHENTICATED or PERMISSION_DENIED)",
            ["code"],
            registry=registry,
        )
        self.secret_reloads_total = Counter(
            "gateway_secret_reloads_total",
            "Reloads of the key file (kind keys) and the TLS files (kind tls) by outcome "
            "(loaded, failed: the previous ones stay in service)",
            ["kind", "outcome"],
            registry=registry,
        )
        # Run-time faults (gateway/faults.py): variant quarantine and per-server breakers.
        self.variant_quarantines_total = Counter(
            "gateway_variant_quarantines_total",
            "Times a variant was quarantined after failed runs in a row",
            ["model", "variant"],
            registry=registry,
        )
        self.variant_health_checks_total = Counter(
            "gateway_variant_health_checks_total",
            "Health checks of quarantined variants by outcome (passed: back in service)",
            ["model", "variant", "outcome"],
            registry=registry,
        )
        self.retries_total = Counter(
            "gateway_retries_total",
            "Requests run again on another variant after their variant failed",
            ["model"],
            registry=registry,
        )
        self.circuit_state = Gauge(
            "gateway_circuit_state",
            "Circuit breaker of a backend server: 0 closed, 1 half-open (trial), 2 open",
            ["server"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.circuit_opens_total = Counter(
            "gateway_circuit_opens_total",
            "Times a backend server's circuit opened",
            ["server"],
            registry=registry,
        )
        # Known label values start at zero, so dashboards and rates see a series from the
        # first scrape rather than from the first event.
        for code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            self.auth_rejections_total.labels(code)
        for kind in ("keys", "tls"):
            for outcome in ("loaded", "failed"):
                self.secret_reloads_total.labels(kind, outcome)
        self._variants: dict[tuple[str, str], VariantMetrics] = {}

        self._state = VariantStateCollector(lambda: ())
        registry.register(self._state)

    def track(self, states: Callable[[], Iterable[VariantState]]) -> None:
        """Export every served variant's state, read from ``states`` at each scrape."""
        self._state.states = states

    def exposition(self) -> bytes:
        """The ``/metrics`` text: this process's series, or every worker's.

        With several worker processes (``PROMETHEUS_MULTIPROC_DIR`` set) counters and
        histograms are summed over the workers' files; the variant state comes from the
        shared live table, so any worker's scrape reports the whole gateway.
        """
        if not multiprocess_dir():
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        merged.register(self._state)
        return generate_latest(merged)

    def start_faults(self, model: str, variants: Iterable[str]) -> None:
        """Zero the quarantine and retry series of a family's variants."""
        self.retries_total.labels(model)
        for variant in variants:
            self.variant_quarantines_total.labels(model, variant)
            for outcome in ("passed", "failed"):
                self.variant_health_checks_total.labels(model, variant, outcome)

    def start_circuit(self, server: str) -> None:
        """Publish a backend server's circuit as closed, with no opens yet."""
        self.circuit_state.labels(server).set(0)
        self.circuit_opens_total.labels(server)

    def variant(self, model: str, variant: str) -> VariantMetrics:
        """The bound series of one variant (``variant`` "" before routing)."""
        bound = self._variants.get((model, variant))
        if bound is None:
            bound = self._variants[(model, variant)] = VariantMetrics(self, model, variant)
        return bound
