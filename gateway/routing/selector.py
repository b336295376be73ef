"""The routing policy, as a pure function: budget + variants + live stats + now → ranking.

A variant *can ever fit* when the manifest alone says so: its quality reaches
``min_accuracy``, its GPU memory is within the memory budget and its profiled median at the
request's batch size is within the latency budget; and, idle, its predicted p95 is within
the budget too. If none can, the request fails at once with
:class:`BudgetUnsatisfiableError`, whatever the load.

A variant *fits now* when it is below its in-flight limit and its predicted latency is
within the budget. The prediction starts from the profiled p95 at the request's batch size,
scaled by the profile's own concurrency curve at the variant's current concurrency, blends
in the p95 observed in the live window (weighted by sample count, fading with age) and adds
the wait for graph runs already queued. The most accurate variant that fits now is ranked
first, so traffic moves to smaller variants as load builds and back as it drains. If some
variant can ever fit but none fits now, the request is shed with
:class:`CapacityExhaustedError` rather than queued into a miss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config import MIB
from gateway.errors import BudgetUnsatisfiableError, CapacityExhaustedError
from gateway.manifest import LatencyPoint, Variant
from gateway.routing.live import IDLE, VariantLive
from gateway.types import Budget

PINNED = "pinned"
MOST_ACCURATE = "most-accurate"
LATENCY_BUDGET = "latency-budget"
GPU_MEMORY_BUDGET = "gpu-memory-budget"
LOAD = "load"
REASONS = (PINNED, MOST_ACCURATE, LATENCY_BUDGET, GPU_MEMORY_BUDGET, LOAD)
"""Selection reason codes. Anything but ``most-accurate`` and ``pinned`` is a downgrade:
a more accurate variant was passed over for the named cause."""


@dataclass(frozen=True)
class SelectorConfig:
    """Tuning of the prediction; see ``GatewaySettings`` for each value's meaning."""

    max_in_flight_per_variant: int = 32
    parallelism: int = 2
    observed_weight: float = 0.5
    min_samples: int = 5
    window_s: float = 10.0


@dataclass(frozen=True)
class Ranked:
    """A variant that fits now, with the latency predicted for this request."""

    variant: Variant
    predicted_latency_s: float


@dataclass(frozen=True)
class Choice:
    """The selector's answer: fitting variants best first, and why the first was chosen."""

    ranked: list[Ranked]
    reason: str
    detail: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _profile_at_batch(points: Sequence[LatencyPoint], batch_size: int) -> tuple[float, float]:
    """(p50_s, p95_s) at ``batch_size`` and concurrency 1, scaled beyond the largest batch."""
    single = [p for p in points if p.concurrency == 1] or list(points)
    best = min(single, key=lambda p: (abs(p.batch_size - batch_size), p.batch_size))
    scale = batch_size / best.batch_size if batch_size > best.batch_size else 1.0
    return best.p50_s * scale, best.p95_s * scale


def contention(points: Sequence[LatencyPoint], concurrency: int) -> float:
    """Latency multiplier at ``concurrency`` from the profile's batch-1 concurrency curve.

    Interpolates linearly between profiled concurrencies and, beyond the highest one,
    grows in proportion to concurrency (the variant is saturated there). Without a curve,
    assumes no contention up to the first point.
    """
    curve = sorted(
        {p.concurrency: p.p95_s for p in points if p.batch_size == 1 and p.p95_s > 0}.items()
    )
    if not curve or concurrency <= curve[0][0]:
        return 1.0
    base = curve[0][1]
    for (c0, l0), (c1, l1) in zip(curve, curve[1:], strict=False):
        if concurrency <= c1:
            return (l0 + (l1 - l0) * (concurrency - c0) / (c1 - c0)) / base
    c_max, l_max = curve[-1]
    return (l_max / base) * concurrency / c_max


def predict_latency_s(
    variant: Variant,
    live: VariantLive,
    batch_size: int,
    now_s: float,
    config: SelectorConfig,
) -> float:
    """Predicted end-to-end latency of one more request of ``batch_size`` items on a variant.

    Args:
        variant: The variant with its profiled latency points.
        live: Its live statistics.
        batch_size: Items in the request.
        now_s: Current clock time (ages the observed window).
        config: Blend weights and parallelism.

    Returns:
        Seconds; 0 when the variant has neither a profile nor observations.
    """
    running = max(0, live.in_flight - live.queue_depth)
    observed = live.latency_p95_s
    if variant.latency:
        p50_s, p95_s = _profile_at_batch(variant.latency, batch_size)
        profiled = p95_s * contention(variant.latency, running + 1)
        service_s = p50_s
    elif observed is not None:
        profiled = observed
        service_s = live.latency_p50_s or observed
    else:
        return 0.0
    predicted = profiled
    if observed is not None and live.samples and live.last_sample_s is not None:
        age_s = max(0.0, now_s - live.last_sample_s)
        fade = max(0.0, 1.0 - age_s / config.window_s)
        weight = config.observed_weight * min(1.0, live.samples / config.min_samples) * fade
        predicted = (1.0 - weight) * profiled + weight * observed
    return predicted + live.queue_depth * service_s / config.parallelism


def _static_miss(variant: Variant, budget: Budget, batch_size: int) -> tuple[str, str] | None:
    """Why the manifest says ``variant`` can never meet ``budget``: (code, sentence), or None."""
    if budget.min_accuracy is not None and variant.quality < budget.min_accuracy:
        return (
            "accuracy",
            f"{variant.name} quality {variant.quality:g} < min_accuracy {budget.min_accuracy:g}",
        )
    memory = budget.gpu_memory_budget_bytes
    if memory is not None and variant.gpu_memory_bytes > memory:
        return (
            GPU_MEMORY_BUDGET,
            f"{variant.name} needs {variant.gpu_memory_bytes / MIB:.1f} MiB GPU memory "
            f"> budget {memory / MIB:.1f} MiB",
        )
    if budget.latency_budget_s is not None and variant.latency:
        p50_s, _ = _profile_at_batch(variant.latency, batch_size)
        if p50_s > budget.latency_budget_s:
            return (
                LATENCY_BUDGET,
                f"{variant.name} profiled p50 {_ms(p50_s)} > budget {_ms(budget.latency_budget_s)}",
            )
    return None


def select(
    family: str,
    budget: Budget,
    variants: Sequence[Variant],
    live: Mapping[str, VariantLive],
    now_s: float,
    config: SelectorConfig,
    *,
    batch_size: int = 1,
    pinned: bool = False,
) -> Choice:
    """Rank the variants that can serve a request now, most accurate first.

    Args:
        family: Family name, for messages.
        budget: The request's effective budget.
        variants: Servable (published and loaded) variants; only the pinned one if pinned.
        live: Live statistics by variant model name; missing ones count as idle.
        now_s: Current clock time.
        config: Prediction settings.
        batch_size: Items in the request.
        pinned: The client named the variant; the reason is then ``pinned``.

    Returns:
        The ranking and the reason code and sentence for its first entry.

    Raises:
        BudgetUnsatisfiableError: No variant can ever meet the budget.
        CapacityExhaustedError: Some variant could, but none can now.
    """
    static_misses: dict[str, tuple[str, str]] = {}
    feasible: list[Variant] = []
    for variant in variants:
        miss = _static_miss(variant, budget, batch_size)
        if miss is None:
            feasible.append(variant)
        else:
            static_misses[variant.name] = miss
    if not feasible:
        why = "; ".join(sentence for _, sentence in static_misses.values())
        raise BudgetUnsatisfiableError(
            f"no variant of '{family}' can meet the budget: {why or 'no variants'}"
        )

    ranked: list[Ranked] = []
    dynamic_misses: dict[str, tuple[str, str]] = {}
    limit_s = budget.latency_budget_s
    for variant in feasible:
        state = live.get(variant.model_name, IDLE)
        if state.in_flight >= config.max_in_flight_per_variant:
            dynamic_misses[variant.name] = (
                LOAD,
                f"{variant.name} at its in-flight limit ({config.max_in_flight_per_variant})",
            )
            continue
        predicted_s = predict_latency_s(variant, state, batch_size, now_s, config)
        if limit_s is not None and predicted_s > limit_s:
            # Too slow even idle (its profiled p95 misses) is the budget's doing, not load's.
            idle_s = predict_latency_s(variant, IDLE, batch_size, now_s, config)
            dynamic_misses[variant.name] = (
                LATENCY_BUDGET if idle_s > limit_s else LOAD,
                f"{variant.name} predicted {_ms(predicted_s)} > budget "
                f"{_ms(limit_s)} with {state.in_flight} in flight",
            )
            continue
        ranked.append(Ranked(variant, predicted_s))
    if not ranked:
        if all(code == LATENCY_BUDGET for code, _ in dynamic_misses.values()):
            raise BudgetUnsatisfiableError(
                f"no variant of '{family}' can meet the budget: "
                + "; ".join(sentence for _, sentence in dynamic_misses.values())
            )
        raise CapacityExhaustedError(
            f"every variant of '{family}' that meets the budget is busy: "
            + "; ".join(sentence for _, sentence in dynamic_misses.values())
        )

    ranked.sort(
        key=lambda r: (-r.variant.quality, r.predicted_latency_s, r.variant.gpu_memory_bytes)
    )
    top = ranked[0].variant
    if pinned:
        return Choice(ranked, PINNED, f"{top.name} pinned by the request")
    better = [v for v in variants if v.quality > top.quality]
    if not better:
        return Choice(ranked, MOST_ACCURATE, f"{top.name} is the most accurate variant")
    nearest = min(better, key=lambda v: v.quality)
    code, sentence = dynamic_misses.get(nearest.name) or static_misses[nearest.name]
    return Choice(ranked, code, sentence)
