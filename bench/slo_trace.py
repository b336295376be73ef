"""The bursty trace of the SLO bench: phases, bursts and a mix of budgets, all seeded.

A trace is a list of arrivals (time, item index, budget). Phases set the mean rate as a
multiple of the largest variant's measured capacity, from light load to overload and back.
Some phases are bursty: the rate switches between a high and a low level (on/off, each
dwell drawn from an exponential), with the phase's mean rate kept. Each request draws a
budget from the mix (tight or loose); arrivals are Poisson at the current rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Phase:
    """A stretch of the trace.

    Attributes:
        load_x: Mean arrival rate as a multiple of the largest variant's capacity.
        seconds: How long it lasts.
        bursty: Whether the rate switches between ``burst_high`` and ``burst_low`` times the
            mean (same mean) instead of staying flat.
    """

    load_x: float
    seconds: float
    bursty: bool = False


DEFAULT_PHASES = (
    Phase(0.3, 6.0),
    Phase(0.6, 6.0),
    Phase(0.9, 6.0),
    Phase(1.5, 6.0, bursty=True),
    Phase(3.0, 6.0),
    Phase(1.0, 6.0, bursty=True),
    Phase(0.3, 6.0),
)
"""From light load to three times the largest variant's capacity and back."""

BURST_HIGH = 1.8
BURST_LOW = 0.2
"""Rate levels of a bursty phase, times its mean (equal time at each keeps the mean)."""
BURST_DWELL_S = 0.5
"""Mean time at one level before switching."""


@dataclass(frozen=True)
class BudgetClass:
    """One kind of request budget: a name, its seconds and its share of requests."""

    name: str
    seconds: float
    share: float


@dataclass(frozen=True)
class Arrival:
    """One request of the trace (``segment``: index of its constant-rate stretch)."""

    at_s: float
    phase: int
    item: int
    budget: BudgetClass
    segment: int = 0


@dataclass(frozen=True)
class Segment:
    """A stretch of the trace at one arrival rate."""

    phase: int
    seconds: float
    rate_per_s: float


@dataclass(frozen=True)
class Trace:
    """The arrivals, and the constant-rate stretches they were drawn in."""

    arrivals: list[Arrival]
    segments: list[Segment]


def attainable(trace: Trace, capacity_per_s: float) -> list[int]:
    """Per phase, the most requests any policy could answer at ``capacity_per_s``.

    A fluid bound: within each constant-rate stretch, the arrivals or what the capacity
    serves in its time, whichever is fewer (work never carried over, queueing ignored). At
    a bursty phase's low level, or below capacity, that is every arrival; in overload it is
    the capacity. An upper bound on any router whose fastest variant has that capacity.
    """
    counts = [0] * len(trace.segments)
    for arrival in trace.arrivals:
        counts[arrival.segment] += 1
    phases = 1 + max((s.phase for s in trace.segments), default=-1)
    bound = [0] * phases
    for segment, count in zip(trace.segments, counts, strict=True):
        bound[segment.phase] += min(count, int(capacity_per_s * segment.seconds))
    return bound


def _rate_segments(
    phase: Phase, mean_per_s: float, rng: np.random.Generator
) -> list[tuple[float, float]]:
    """(duration, rate) pieces of one phase."""
    if not phase.bursty:
        return [(phase.seconds, mean_per_s)]
    pieces: list[tuple[float, float]] = []
    left, high = phase.seconds, bool(rng.integers(2))
    while left > 0:
        dwell = min(left, float(rng.exponential(BURST_DWELL_S)))
        pieces.append((dwell, mean_per_s * (BURST_HIGH if high else BURST_LOW)))
        left -= dwell
        high = not high
    return pieces


def make_trace(
    phases: tuple[Phase, ...],
    capacity_per_s: float,
    budgets: tuple[BudgetClass, ...],
    items: int,
    seed: int = 0,
) -> Trace:
    """Every arrival of the trace, in time order, and the stretches of its rates.

    Args:
        phases: The phases, in order.
        capacity_per_s: The largest variant's capacity; phases scale it.
        budgets: The budget mix (shares sum to 1).
        items: Size of the item pool; each request draws one.
        seed: Makes the trace the same for every policy and run.
    """
    rng = np.random.default_rng(seed)
    shares = np.array([b.share for b in budgets], dtype=float)
    shares /= shares.sum()
    arrivals: list[Arrival] = []
    segments: list[Segment] = []
    start = 0.0
    for index, phase in enumerate(phases):
        t = start
        for duration, rate in _rate_segments(phase, phase.load_x * capacity_per_s, rng):
            end = t + duration
            segment = len(segments)
            segments.append(Segment(index, duration, rate))
            if rate > 0:
                at = t + float(rng.exponential(1 / rate))
                while at < end:
                    budget = budgets[int(rng.choice(len(budgets), p=shares))]
                    item = int(rng.integers(items))
                    arrivals.append(Arrival(at, index, item, budget, segment))
                    at += float(rng.exponential(1 / rate))
            t = end
        start += phase.seconds
    return Trace(arrivals, segments)
