"""How long one task run on a variant takes: fitted from its profile, refined online.

The profile gives p50 and p95 at several batch sizes (concurrency 1). Service time is
modelled as ``fixed + per_row * rows`` fitted by least squares on the p50s, and the idle
tail as the profile's p95/p50 ratio. Requests differ in size (audio seconds, tokens): when a
family's profile also measured latency against item size, each row weighs what the size
curve (interpolated between its points) says an item of its size costs against one of the
profiled mean size, so a long sentence is predicted long and a short one short. Runs that
execute side by side share the cores: the profile's concurrency points (batch 1 at
concurrency 2, 4, ...) give how much slower each one runs, and a prediction says at what
concurrency the run will execute.

Online, each finished run reports its measured seconds and the concurrency it ran at; the
ratio measured / predicted (at that concurrency) enters a median over the last few runs and a
95th percentile over a longer window, and ``observed_weight`` blends them into every
prediction. Both are order statistics, not means: a translation that runs on to its output
cap takes ten times its prediction, and one such run among a variant's first few must not
make the variant look ten times slower (a mean, or the "95th percentile" of five runs, which
is their maximum, would). Until the window holds enough runs for a 95th percentile, the
profile's tail shape around the measured median stands in for the runs still missing.
Execution time, not queueing, is what is observed (queueing is predicted from the pool's
queue), so a burst that is shed leaves no stale latency behind: the correction says how
fast the variant runs now on this machine.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
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
        tail: p95 over p50, idle: how much slower a slow run is (at batch 1; within a size
            group when sizes are profiled, since the prediction then knows the size).
        size_curve: ``(size, p50_s)`` at batch 1, ascending in size: how an item's cost
            grows with its size (empty: sizes not profiled).
        profiled_size: The item size the batch points stand for (``profiled_item_size``).
        contention: ``(concurrency, slowdown)`` pairs, ascending: how much slower a run is
            with that many runs executing at once (1.0 at concurrency 1).
    """

    fixed_s: float
    per_row_s: float
    tail: float = 1.0
    size_curve: tuple[tuple[float, float], ...] = ()
    profiled_size: float | None = None
    contention: tuple[tuple[int, float], ...] = ()

    def p50_s(self, rows: int, size: float | None = None, concurrency: int = 1) -> float:
        """Median seconds of one run of ``rows`` items whose sizes sum to ``size``."""
        base = self.fixed_s + self.per_row_s * self._row_units(rows, size)
        return base * self.slowdown(concurrency)

    def p95_s(self, rows: int, size: float | None = None, concurrency: int = 1) -> float:
        """Tail (p95) seconds of the same run."""
        return self.p50_s(rows, size, concurrency) * self.tail

    def slowdown(self, concurrency: int) -> float:
        """How much slower one run is with ``concurrency`` runs executing at once.

        Linear between profiled concurrencies; beyond the highest, in proportion to
        concurrency (the cores are saturated there); 1.0 without a profiled curve.
        """
        curve = self.contention
        if concurrency <= 1 or not curve:
            return 1.0
        previous = (1, 1.0)
        for point in curve:
            if concurrency <= point[0]:
                (c0, f0), (c1, f1) = previous, point
                return f0 + (f1 - f0) * (concurrency - c0) / (c1 - c0)
            previous = point
        c_max, f_max = curve[-1]
        return f_max * concurrency / c_max

    def _row_units(self, rows: int, size: float | None) -> float:
        """Rows, each weighed by its cost at its size against an item of profiled size."""
        if size is None or not self.size_curve or not self.profiled_size or rows <= 0:
            return float(rows)
        typical = _interpolate(self.size_curve, self.profiled_size)
        if typical <= 0:
            return float(rows)
        return rows * _interpolate(self.size_curve, size / rows) / typical


def _interpolate(curve: Sequence[tuple[float, float]], x: float) -> float:
    """The curve at ``x``: linear between points, extended along its end segments."""
    if len(curve) == 1:
        return curve[0][1] * (x / curve[0][0]) if curve[0][0] > 0 else curve[0][1]
    if x <= curve[0][0]:
        (x0, y0), (x1, y1) = curve[0], curve[1]
    elif x >= curve[-1][0]:
        (x0, y0), (x1, y1) = curve[-2], curve[-1]
    else:
        i = next(i for i in range(1, len(curve)) if x <= curve[i][0])
        (x0, y0), (x1, y1) = curve[i - 1], curve[i]
    slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
    return max(0.05 * min(y for _, y in curve), y0 + slope * (x - x0))


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
    points: Sequence[LatencyPoint],
    sizes: Sequence[SizePoint] = (),
    profiled_size: float | None = None,
) -> ServiceFit | None:
    """Fit the service-time model to a variant's profile; None without batch-1 points.

    Args:
        points: Latency points; those at concurrency 1 are used.
        sizes: Latency at batch 1 against item size, if the family measured it.
        profiled_size: The item size ``points`` stand for (``profiled_item_size``).
    """
    single = sorted((p for p in points if p.concurrency == 1), key=lambda p: p.batch_size)
    if not single:
        return None
    alone = next((p.p50_s for p in single if p.batch_size == 1), 0.0)
    contention = tuple(
        sorted(
            (p.concurrency, max(1.0, p.p50_s / alone))
            for p in points
            if p.batch_size == 1 and p.concurrency > 1 and alone > 0
        )
    )
    fixed_s, per_row_s = _line([p.batch_size for p in single], [p.p50_s for p in single])
    first = single[0]
    tail = first.p95_s / first.p50_s if first.p50_s > 0 else 1.0
    curve = tuple(sorted((s.size, s.p50_s) for s in sizes if s.size > 0))
    sized = len(curve) >= 2 and bool(profiled_size)
    if sized:
        # The batch-1 tail spans items of every size; a prediction that knows the size has
        # only the spread within a size group left (translation: about 1.8x, not 3.4x).
        tail = _within_size_tail(sizes) or tail
    return ServiceFit(
        fixed_s=fixed_s,
        per_row_s=per_row_s,
        tail=max(1.0, tail),
        size_curve=curve if sized else (),
        profiled_size=profiled_size if sized else None,
        contention=_monotone(contention),
    )


def _within_size_tail(sizes: Sequence[SizePoint]) -> float | None:
    """p95 / p50 within a size group, the groups weighed by their runs (None: no groups)."""
    groups = [(s.runs, s.p95_s / s.p50_s) for s in sizes if s.size > 0 and s.p50_s > 0]
    runs = sum(n for n, _ in groups)
    return sum(n * ratio for n, ratio in groups) / runs if runs else None


def _monotone(curve: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
    """The curve made non-decreasing: more runs at once never make one run faster."""
    out: list[tuple[int, float]] = []
    for concurrency, factor in curve:
        out.append((concurrency, max(factor, out[-1][1] if out else 1.0)))
    return tuple(out)


@dataclass(frozen=True)
class Measured:
    """What a variant's runs measured, as ratios to the profile's median for each run.

    Attributes:
        ratio: Median of the recent runs' measured / profiled seconds.
        tail: The ratio's 95th percentile over the recent runs.
        samples: Runs measured.
        at_s: Clock time of the newest run (what fades it).
    """

    ratio: float = 1.0
    tail: float = 1.0
    samples: int = 0
    at_s: float = 0.0


TAIL_QUANTILE = 0.95
"""The quantile ``Measured.tail`` tracks."""
TAIL_WINDOW = 64
"""Recent runs (of this process) the tail is taken over."""
TAIL_RUNS = 20
"""Runs a 95th percentile needs before one outlier stops being it (with 20 it is the second
largest): until then the profile's tail stands in for the runs still missing."""
MEDIAN_WINDOW = 16
"""Recent runs the median ratio is taken over: follows a slowdown within a few runs."""
DEFAULT_TAIL = 1.5
"""p95 / p50 assumed for a variant without a profile."""


def _tail_ratio(recent: Sequence[float], median: float, profiled_tail: float) -> float:
    """The 95th percentile of ``recent`` ratios, the profile's tail filling in missing runs.

    The profile's tail shape around the measured median counts as each of the runs short of
    ``TAIL_RUNS``, so one outlier among a variant's first runs is not its tail, while two
    of twenty are.
    """
    missing = max(0, TAIL_RUNS - len(recent))
    ordered = sorted([*recent, *[profiled_tail * median] * missing])
    return max(median, ordered[math.ceil(TAIL_QUANTILE * len(ordered)) - 1])


@dataclass(frozen=True)
class Prediction:
    """What routing needs to know about one run on one variant.

    Attributes:
        p50_s: Its median seconds now (at the concurrency it will run at).
        p95_s: Its tail seconds now.
        idle_p50_s: Its median alone on an idle machine, the lower of profile and runs
            (whether the variant can ever meet a budget; the profile alone when
            ``observed_weight`` is 0).
        idle_p95_s: Its tail alone, likewise (whether a miss is the budget's doing).
        measured_p50_s: What measured runs say its median alone is, whatever
            ``observed_weight`` says; None until ``min_samples`` runs.
    """

    p50_s: float
    p95_s: float
    idle_p50_s: float
    idle_p95_s: float
    measured_p50_s: float | None


class Learning:
    """Where a variant's :class:`Measured` is kept: here, for one process.

    :class:`gateway.routing.shared.SharedLearning` keeps it in the workers' table instead.
    """

    def __init__(self) -> None:
        """Nothing measured yet."""
        self._measured = Measured()

    def read(self) -> Measured:
        """What every process measuring this variant has measured."""
        return self._measured

    def own(self) -> Measured:
        """What this process has measured."""
        return self._measured

    def write(self, measured: Measured) -> None:
        """Store this process's new measurements."""
        self._measured = measured


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
        learning: Learning | None = None,
        stale_s: float = math.inf,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Start from ``fit`` (None: learn everything from observations).

        Args:
            fit: The profile's model.
            observed_weight: Weight of the measured correction at full sample count (0-1).
            min_samples: Observations at which the correction reaches its full weight.
            learning: Where measurements are kept (shared between workers, or not).
            stale_s: Time constant over which measurements fade once no run refreshes
                them, so a variant routing no longer picks is predicted from its profile
                again (and tried again) instead of being judged on a slow spell forever.
            clock: Monotonic seconds, the same for every worker.
        """
        self.fit = fit
        self.observed_weight = observed_weight
        self.min_samples = min_samples
        self.stale_s = stale_s
        self.clock = clock
        self.learning = learning or Learning()
        self._recent: deque[float] = deque(maxlen=TAIL_WINDOW)
        self._lock = threading.Lock()

    def _base_p50_s(self, rows: int, size: float | None, concurrency: int = 1) -> float:
        """The profile's median, or one second per item without a profile."""
        if self.fit is not None:
            return self.fit.p50_s(rows, size, concurrency)
        return float(rows)

    @property
    def _profiled_tail(self) -> float:
        """p95 / p50 the profile gives a run (``DEFAULT_TAIL`` without a profile)."""
        return self.fit.tail if self.fit is not None else DEFAULT_TAIL

    def _weight(self, measured: Measured) -> float:
        if self.fit is None:
            return 1.0 if measured.samples else 0.0
        weight = self.observed_weight * min(1.0, measured.samples / self.min_samples)
        if weight and self.stale_s < math.inf:
            weight *= math.exp(-max(0.0, self.clock() - measured.at_s) / self.stale_s)
        return weight

    def correction(self, measured: Measured | None = None) -> float:
        """The factor applied to the profile's median now (1.0 before any observation)."""
        measured = measured or self.learning.read()
        if self.fit is None:
            return measured.ratio if measured.samples else 0.0
        weight = self._weight(measured)
        return (1.0 - weight) + weight * measured.ratio

    def predict(self, rows: int, size: float | None = None, concurrency: int = 1) -> Prediction:
        """Every figure routing needs for one run, from one read of the measurements.

        Args:
            rows: Items in the run.
            size: Their total size in the family's size unit (None: typical items).
            concurrency: Runs executing beside it, itself included.
        """
        measured = self.learning.read()
        base = self._base_p50_s(rows, size, concurrency)
        weight = self._weight(measured)
        tail = (1.0 - weight) * self._profiled_tail + weight * measured.tail
        alone = self._base_p50_s(rows, size) if concurrency > 1 else base
        trusted = measured.samples >= self.min_samples
        if self.fit is None:
            idle_p50 = idle_p95 = 0.0
        elif trusted and weight > 0:
            # A profile from a busier or slower machine must not refuse what this one does
            # in time; load must not turn a slowdown into a refusal: the lower of the two.
            idle_p50 = alone * min(1.0, measured.ratio)
            idle_p95 = alone * min(self.fit.tail, measured.tail)
        else:
            idle_p50, idle_p95 = alone, alone * self.fit.tail
        return Prediction(
            p50_s=base * self.correction(measured),
            p95_s=base * tail,
            idle_p50_s=idle_p50,
            idle_p95_s=idle_p95,
            measured_p50_s=alone * measured.ratio if trusted else None,
        )

    def p50_s(self, rows: int, size: float | None = None, concurrency: int = 1) -> float:
        """Predicted median seconds of a run of ``rows`` items of total ``size``."""
        return self.predict(rows, size, concurrency).p50_s

    def p95_s(self, rows: int, size: float | None = None, concurrency: int = 1) -> float:
        """Predicted tail seconds of the same run: the profile's tail and the measured one."""
        return self.predict(rows, size, concurrency).p95_s

    def observe(self, rows: int, size: float | None, seconds: float, concurrency: int = 1) -> None:
        """Record that a run of ``rows`` items took ``seconds`` beside others."""
        if rows <= 0 or seconds <= 0:
            return
        predicted = self._base_p50_s(rows, size, concurrency)
        if predicted <= 0:
            return
        r = seconds / predicted
        if self.fit is not None:
            r = min(MAX_RATIO, max(MIN_RATIO, r))
        with self._lock:
            old = self.learning.own()
            self._recent.append(r)
            recent = list(self._recent)
            # Both follow a slowdown and its end within their windows of runs.
            ratio = statistics.median(recent[-MEDIAN_WINDOW:])
            tail = _tail_ratio(recent, ratio, self._profiled_tail)
            self.learning.write(Measured(ratio, tail, old.samples + 1, self.clock()))

    @property
    def samples(self) -> int:
        """Observations so far (every worker's)."""
        return self.learning.read().samples
