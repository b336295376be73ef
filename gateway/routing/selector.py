"""The routing policy, as a pure function: budget + variants + estimates → ranking.

A variant *can ever fit* when the manifest alone says so: its quality reaches
``min_accuracy``, its GPU memory is within the memory budget and its profiled median for
this request (batch and size) is within the latency budget. If none can, the request fails
at once with :class:`BudgetUnsatisfiableError`, whatever the load.

A variant *fits now* when it is below its in-flight limit and the request's predicted
completion on it is within the budget: the time already spent, plus the wait for the work
ahead in the variant's compute pool (shared with every variant on the same cores or
server), plus its own run at the tail (p95) of its service-time model. The most accurate
variant that fits now is ranked first, so traffic moves to smaller variants as load builds
and back as it drains. If some variant could fit but none fits now, the request is shed at
arrival with :class:`CapacityExhaustedError` rather than queued into a miss. A soft budget
(a late answer still helps) is the exception while the compute has room: if some variant's
median completion fits, the likeliest runs (best effort), since shed it would be no answer
at all and running it costs nobody.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.config import MIB
from gateway.errors import BudgetUnsatisfiableError, CapacityExhaustedError
from gateway.manifest import Variant
from gateway.types import Budget

PINNED = "pinned"
MOST_ACCURATE = "most-accurate"
LATENCY_BUDGET = "latency-budget"
GPU_MEMORY_BUDGET = "gpu-memory-budget"
LOAD = "load"
"""Selection reason codes. Anything but ``most-accurate`` and ``pinned`` is a downgrade:
a more accurate variant was passed over for the named cause."""


@dataclass(frozen=True)
class Estimate:
    """What the data plane predicts for one request on one variant.

    Attributes:
        idle_p50_s: The profile's median for this request alone (no load, no correction):
            whether the variant can ever fit.
        service_p50_s: The median of its run now: what it costs the shared compute.
        idle_p95_s: The profile's tail for this request alone: whether load is to blame.
        service_p95_s: The tail of its run now (corrected by what runs measure lately).
        wait_s: Predicted time before its run starts (work ahead in its compute pool).
        in_flight: Requests admitted to the variant and not finished.
    """

    idle_p50_s: float
    idle_p95_s: float
    service_p95_s: float
    service_p50_s: float = 0.0
    wait_s: float = 0.0
    in_flight: int = 0

    @property
    def completion_s(self) -> float:
        """Predicted seconds from now to the answer."""
        return self.wait_s + self.service_p95_s


IDLE = Estimate(0.0, 0.0, 0.0)
"""A variant with no profile, nothing ahead of it."""


@dataclass(frozen=True)
class Ranked:
    """A variant that fits now, with the latency predicted for this request.

    ``at_tail`` is False for a best-effort choice: only its median completion fits.
    """

    variant: Variant
    predicted_latency_s: float
    at_tail: bool = True


@dataclass(frozen=True)
class Choice:
    """The selector's answer: fitting variants best first, and why the first was chosen."""

    ranked: list[Ranked]
    reason: str
    detail: str


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _static_miss(variant: Variant, budget: Budget, estimate: Estimate) -> tuple[str, str] | None:
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
    limit_s = budget.latency_budget_s
    if limit_s is not None and estimate.idle_p50_s > limit_s:
        return (
            LATENCY_BUDGET,
            f"{variant.name} profiled p50 {_ms(estimate.idle_p50_s)} > budget {_ms(limit_s)}",
        )
    return None


def _likeliest(
    feasible: Sequence[tuple[Variant, Estimate]], limit_s: float | None, max_in_flight: int
) -> list[Ranked] | None:
    """Best-effort ranking when no variant fits at its tail: those whose median does.

    With room in the compute, running a request that will probably make its budget beats a
    certain miss; shedding it saves nothing another request needs. Likeliest first: the
    lowest predicted tail completion.
    """
    if limit_s is None:
        return None
    likely = [
        Ranked(variant, estimate.completion_s, at_tail=False)
        for variant, estimate in feasible
        if estimate.in_flight < max_in_flight
        and estimate.wait_s + estimate.service_p50_s <= limit_s
    ]
    likely.sort(key=lambda r: (r.predicted_latency_s, -r.variant.quality))
    return likely or None


def select(
    family: str,
    budget: Budget,
    variants: Sequence[Variant],
    estimates: Mapping[str, Estimate],
    *,
    max_in_flight_per_variant: int,
    elapsed_s: float = 0.0,
    pinned: bool = False,
    utilization: float = 0.0,
    target_utilization: float = 1.0,
    queue_headroom: float = 0.0,
) -> Choice:
    """Rank the variants that can serve a request now, most accurate first.

    While the shared compute is busier than ``target_utilization`` (run time per second
    against its threads), every request spent on a bigger variant is capacity another
    request lacks: the cheapest variant that meets the budget is ranked first instead, so
    overload is met at the fastest variant's capacity.

    Args:
        family: Family name, for messages.
        budget: The request's effective budget.
        variants: Servable variants; only the pinned one if pinned.
        estimates: Predictions for this request by variant model name (missing: idle, 0 s).
        max_in_flight_per_variant: Admitted requests one variant may hold.
        elapsed_s: Seconds the request has already spent in the gateway.
        pinned: The client named the variant; the reason is then ``pinned``.
        utilization: Recent run time per second over the compute's threads.
        target_utilization: Above it, the cheapest fitting variant is ranked first.
        queue_headroom: A variant dearer than the cheapest must fit with its wait counted
            ``1 + queue_headroom`` times, so that a queue building behind it still fits on a
            cheaper one (no effect on an idle pool).

    Returns:
        The ranking and the reason code and sentence for its first entry.

    Raises:
        BudgetUnsatisfiableError: No variant can ever meet the budget.
        CapacityExhaustedError: Some variant could, but none can now (for a soft budget while
            the compute has room: not even at its median).
    """
    static_misses: dict[str, tuple[str, str]] = {}
    feasible: list[tuple[Variant, Estimate]] = []
    for variant in variants:
        estimate = estimates.get(variant.model_name, IDLE)
        miss = _static_miss(variant, budget, estimate)
        if miss is None:
            feasible.append((variant, estimate))
        else:
            static_misses[variant.name] = miss
    if not feasible:
        why = "; ".join(sentence for _, sentence in static_misses.values())
        raise BudgetUnsatisfiableError(
            f"no variant of '{family}' can meet the budget: {why or 'no variants'}"
        )

    ranked: list[Ranked] = []
    dynamic_misses: dict[str, tuple[str, str]] = {}
    limit_s = None if budget.latency_budget_s is None else budget.latency_budget_s - elapsed_s
    cheapest = min(e.service_p50_s for _, e in feasible)
    for variant, estimate in feasible:
        if estimate.in_flight >= max_in_flight_per_variant:
            dynamic_misses[variant.name] = (
                LOAD,
                f"{variant.name} at its in-flight limit ({max_in_flight_per_variant})",
            )
            continue
        predicted_s = estimate.completion_s
        if estimate.service_p50_s > cheapest:
            # A dearer variant must also leave the queue room: work arriving behind it
            # should still fit on a cheaper one.
            predicted_s += queue_headroom * estimate.wait_s
        if limit_s is not None and predicted_s > limit_s:
            # Too slow even idle (its profiled tail misses the whole budget) is the budget's
            # doing. Time already spent in the gateway is load's: it waited for the event loop.
            idle = estimate.idle_p95_s > (budget.latency_budget_s or 0.0)
            dynamic_misses[variant.name] = (
                LATENCY_BUDGET if idle else LOAD,
                f"{variant.name} predicted {_ms(predicted_s)} > budget {_ms(limit_s)} "
                f"({_ms(estimate.wait_s)} waiting, {estimate.in_flight} in flight)",
            )
            continue
        ranked.append(Ranked(variant, predicted_s))
    saturated = utilization >= target_utilization and not pinned
    if not ranked:
        misses = "; ".join(sentence for _, sentence in dynamic_misses.values())
        if all(code == LATENCY_BUDGET for code, _ in dynamic_misses.values()):
            raise BudgetUnsatisfiableError(
                f"no variant of '{family}' can meet the budget: {misses}"
            )
        # Only a soft budget: a hard one's late answer is useless, so it is never run on a
        # median's chance.
        best_effort = budget.hard is False and not saturated
        likeliest = (
            _likeliest(feasible, limit_s, max_in_flight_per_variant) if best_effort else None
        )
        if likeliest is None:
            raise CapacityExhaustedError(
                f"every variant of '{family}' that meets the budget is busy: {misses}"
            )
        return Choice(
            likeliest,
            PINNED if pinned else LOAD,
            f"no variant meets the budget at its tail ({misses}); "
            f"{likeliest[0].variant.name} meets it at its median and the compute has room",
        )

    if saturated:
        costs = {v.name: e.service_p50_s for v, e in feasible}
        ranked.sort(key=lambda r: (costs[r.variant.name], -r.variant.quality))
    else:
        ranked.sort(
            key=lambda r: (-r.variant.quality, r.predicted_latency_s, r.variant.gpu_memory_bytes)
        )
    top = ranked[0].variant
    if pinned:
        return Choice(ranked, PINNED, f"{top.name} pinned by the request")
    if saturated and any(r.variant.quality > top.quality for r in ranked):
        return Choice(
            ranked,
            LOAD,
            f"the compute is {100 * utilization:.0f} % busy (target "
            f"{100 * target_utilization:.0f} %): {top.name}, the cheapest variant that meets "
            "the budget, serves",
        )
    better = [v for v in variants if v.quality > top.quality]
    if not better:
        return Choice(ranked, MOST_ACCURATE, f"{top.name} is the most accurate variant")
    nearest = min(better, key=lambda v: v.quality)
    code, sentence = dynamic_misses.get(nearest.name) or static_misses[nearest.name]
    return Choice(ranked, code, sentence)
