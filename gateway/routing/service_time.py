"""How long one task run on a variant takes: fitted from its profile, refined online.

The profile gives p50 and p95 at several batch sizes (concurrency 1). Service time is
modelled as ``fixed + per_row * rows`` fitted by least squares on the p50s, and the idle
tail as the profile's p95/p50 ratio. Requests differ in size (audio seconds, tokens): when a
family's profile also measured latency against item size, the per-row term scales with the
request's size relative to the items profiled.

Online, each finished run reports its measured seconds; the ratio measured / predicted
enters an exponentially weighted mean, and ``observed_weight`` blends it into every
prediction. Execution time, not queueing, is what is observed (queueing is predicted from
the pool's queue), so a burst that is shed leaves no stale latency behind: the correction
says how fast the variant runs now, with the machine as busy as it is.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.manifest import LatencyPoint, SizePoint

MIN_RATIO = 0.1
MAX_RATIO = 10.0
"""Bounds of one observation's measured / predicted ratio, so one outlier cannot swing it."""


@dataclass(frozen=True)
class ServiceFit:
    """Service seconds of a run of ``rows`` items: ``fixed_s + per_row_s * rows``.

    Attributes:
        fixed_s: Cost of a run regardless of its rows.
        per_row_s: Cost of one more item of the profiled typical size.
        tail: p95 over p50 at batch 1, idle: how much slower a slow run is.
        size_fixed: Share of ``per_row_s`` that does not grow with an item's size.
        profiled_size: Mean item size of the profile's items (None: sizes not profiled).
    """

    fixed_s: float
    per_row_s: float
    tail: float = 1.0
    size_fixed: float = 1.0
    profiled_size: float | None = None

    def p50_s(self, rows: int, size: float | None = None) -> float:
        """Median seconds of one run of ``rows`` items whose sizes sum to ``size``."""
        return self.fixed_s + self.per_row_s * self._row_units(rows, size)

    def p95_s(self, rows: int, size: float | None = None) -> float:
        """Tail (p95) seconds of the same run."""
        return self.p50_s(rows, size) * self.tail

    def _row_units(self, rows: int, size: float | None) -> float:
        if size is None or self.profiled_size is None or self.profiled_size <= 0:
            return float(rows)
        scaled = size / self.profiled_size
        return rows * self.size_fixed + (1.0 - self.size_fixed) * scaled


def _line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares intercept and slope (slope 0 for a single point), both >= 0."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    if var <= 0:
        return 0.0, mean_y / mean_x if mean_x > 0 else 0.0
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    slope = max(0.0, slope)
    intercept = mean_y - slope * mean_x
    if intercept < 0:  # through the origin instead: never predict a negative fixed cost
        return 0.0, sum(x * y for x, y in zip(xs, ys, strict=True)) / sum(x * x for x in xs)
    return intercept, slope


def fit_profile(
    points: Sequence[LatencyPoint], sizes: Sequence[SizePoint] = (), mean_size: float | None = None
) -> ServiceFit | None:
    """Fit the service-time model to a variant's profile; None without batch-1 points.

    Args:
        points: Latency points; those at concurrency 1 are used.
        sizes: Latency at batch 1 against item size, if the family measured it.
        mean_size: Mean item size of the items behind ``points``.
    """
    single = sorted((p for p in points if p.concurrency == 1), key=lambda p: p.batch_size)
    if not single:
        return None
    fixed_s, per_row_s = _line([p.batch_size for p in single], [p.p50_s for p in single])
    first = single[0]
    tail = first.p95_s / first.p50_s if first.p50_s > 0 else 1.0
    size_fixed = 1.0
    if len(sizes) >= 2 and mean_size:
        # p50(size) = a + b * size at batch 1; the share of a row's cost that is fixed.
        a, b = _line([s.size for s in sizes], [s.p50_s for s in sizes])
        at_mean = a + b * mean_size
        size_fixed = min(1.0, max(0.0, a / at_mean)) if at_mean > 0 else 1.0
    return ServiceFit(
        fixed_s=fixed_s,
        per_row_s=per_row_s,
        tail=max(1.0, tail),
        size_fixed=size_fixed,
        profiled_size=mean_size if len(sizes) >= 2 else None,
    )


class Learning:
    """What a variant's runs have measured: a ratio to its profile and a sample count.

    Kept here for one process; :class:`SharedLearning` keeps it in the workers' table.
    """

    def __init__(self) -> None:
        """Nothing measured yet."""
        self._ratio = 1.0
        self._samples = 0

    def read(self) -> tuple[float, int]:
        """(ratio, samples) over everything that measures this variant."""
        return self._ratio, self._samples

    def own(self) -> tuple[float, int]:
        """(ratio, samples) of this process's runs."""
        return self._ratio, self._samples

    def write(self, ratio: float, samples: int) -> None:
        """Store this process's new ratio and count."""
        self._ratio, self._samples = ratio, samples


class ServiceModel:
    """One variant's service-time prediction, corrected by what its runs measure.

    Thread-safe: runs report from worker threads while the loop predicts. Without a
    profile, a run is predicted at the measured seconds per item (0 before any run).
    """

    def __init__(
        self,
        fit: ServiceFit | None,
        *,
        observed_weight: float,
        min_samples: int,
        smoothing: float = 0.1,
        learning: Learning | None = None,
    ) -> None:
        """Start from ``fit`` (None: learn everything from observations).

        Args:
            fit: The profile's model.
            observed_weight: Weight of the measured correction at full sample count (0-1).
            min_samples: Observations at which the correction reaches its full weight.
            smoothing: Weight of each new observation in the running mean ratio.
            learning: Where measurements are kept (shared between workers, or not).
        """
        self.fit = fit
        self.observed_weight = observed_weight
        self.min_samples = min_samples
        self.smoothing = smoothing
        self.learning = learning or Learning()
        self._lock = threading.Lock()

    def _base_p50_s(self, rows: int, size: float | None) -> float:
        """The profile's median, or one second per item without a profile."""
        if self.fit is not None:
            return self.fit.p50_s(rows, size)
        return float(rows)

    def correction(self) -> float:
        """The factor applied to the profile now (1.0 before any observation)."""
        ratio, samples = self.learning.read()
        if self.fit is None:
            return ratio if samples else 0.0
        weight = self.observed_weight * min(1.0, samples / self.min_samples)
        return (1.0 - weight) + weight * ratio

    def p50_s(self, rows: int, size: float | None = None) -> float:
        """Predicted median seconds of a run of ``rows`` items of total ``size``."""
        return self._base_p50_s(rows, size) * self.correction()

    def p95_s(self, rows: int, size: float | None = None) -> float:
        """Predicted tail seconds of the same run."""
        tail = self.fit.tail if self.fit is not None else 1.5
        return self.p50_s(rows, size) * tail

    def measured_p50_s(self, rows: int, size: float | None = None) -> float | None:
        """What runs have measured for such a run, whatever ``observed_weight`` says.

        None until ``min_samples`` runs were seen.
        """
        ratio, samples = self.learning.read()
        if samples < self.min_samples:
            return None
        return self._base_p50_s(rows, size) * ratio

    def observe(self, rows: int, size: float | None, seconds: float) -> None:
        """Record that a run of ``rows`` items took ``seconds``."""
        if rows <= 0 or seconds <= 0:
            return
        predicted = self._base_p50_s(rows, size)
        if predicted <= 0:
            return
        measured = seconds / predicted
        if self.fit is not None:
            measured = min(MAX_RATIO, max(MIN_RATIO, measured))
        with self._lock:
            ratio, samples = self.learning.own()
            ratio = measured if samples == 0 else ratio + self.smoothing * (measured - ratio)
            self.learning.write(ratio, samples + 1)

    @property
    def samples(self) -> int:
        """Observations so far (every worker's)."""
        return self.learning.read()[1]
