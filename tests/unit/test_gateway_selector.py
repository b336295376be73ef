"""The pure selector: ranking, reasons and errors from per-variant estimates."""

from __future__ import annotations

import pytest

from gateway.errors import BudgetUnsatisfiableError, CapacityExhaustedError
from gateway.manifest import Artifact, Variant
from gateway.routing.selector import Estimate, select
from gateway.types import Budget

MIB = 2**20


def variant(name: str, quality: float, memory_mb: int) -> Variant:
    return Variant(
        name=name,
        model_name=f"fam__{name}",
        status="published",
        recommended=True,
        precision="fp32",
        pruning_ratio=0.0,
        artifacts=[Artifact(path=f"fam__{name}/1/model.onnx", sha256="0" * 64, size_bytes=1)],
        size_bytes=memory_mb,
        parameters=1,
        metrics={"top1": quality},
        quality=quality,
        quality_drop=0.0,
        latency=[],
        resident_memory_bytes=1,
        gpu_memory_bytes=memory_mb * MIB,
    )


FP32 = variant("fp32", 98.0, 64)
FP16 = variant("fp16", 97.0, 32)
INT8 = variant("int8", 95.0, 16)
LADDER = [INT8, FP32, FP16]  # order of the input must not matter
# Idle: median, tail (1.5x). fp32 20/30 ms, fp16 10/15 ms, int8 4/6 ms.
IDLE_MS = {"fp32": 20.0, "fp16": 10.0, "int8": 4.0}


def idle(name: str, wait_ms: float = 0.0, slower: float = 1.0, in_flight: int = 0) -> Estimate:
    p50 = IDLE_MS[name] / 1000
    return Estimate(
        idle_p50_s=p50,
        idle_p95_s=1.5 * p50,
        service_p95_s=1.5 * p50 * slower,
        service_p50_s=p50 * slower,
        wait_s=wait_ms / 1000,
        in_flight=in_flight,
    )


UNBOUNDED = Budget()


def choose(budget=UNBOUNDED, estimates=None, variants=LADDER, limit=4, **kw):
    table = {v.model_name: idle(v.name) for v in variants}
    table.update(estimates or {})
    return select("fam", budget, variants, table, max_in_flight_per_variant=limit, **kw)


def names(choice):
    return [r.variant.name for r in choice.ranked]


def test_unbounded_budget_ranks_by_quality():
    choice = choose()
    assert names(choice) == ["fp32", "fp16", "int8"]
    assert choice.reason == "most-accurate"
    assert choice.ranked[0].predicted_latency_s == pytest.approx(0.030)


@pytest.mark.parametrize(
    ("budget", "first", "reason"),
    [
        (Budget(latency_budget_s=0.025), "fp16", "latency-budget"),  # fp32 p50 20 ok, p95 30 not
        (Budget(latency_budget_s=0.012), "int8", "latency-budget"),
        (Budget(gpu_memory_budget_bytes=40 * MIB), "fp16", "gpu-memory-budget"),
        (Budget(gpu_memory_budget_bytes=20 * MIB), "int8", "gpu-memory-budget"),
        (Budget(min_accuracy=97.0), "fp32", "most-accurate"),
        (Budget(latency_budget_s=1.0, min_accuracy=96.0), "fp32", "most-accurate"),
    ],
)
def test_budget_decides_the_first_choice(budget, first, reason):
    choice = choose(budget)
    assert (choice.ranked[0].variant.name, choice.reason) == (first, reason)


def test_idle_tail_over_budget_is_the_budgets_doing_not_loads():
    choice = choose(Budget(latency_budget_s=0.025))
    assert choice.reason == "latency-budget"
    assert "fp32 predicted 30.0 ms > budget 25.0 ms (0.0 ms waiting, 0 in flight)" in (
        choice.detail
    )


def test_only_idle_misses_left_is_unsatisfiable_not_shedding():
    with pytest.raises(BudgetUnsatisfiableError, match="int8 predicted 6.0 ms > budget 5.0 ms"):
        choose(Budget(latency_budget_s=0.005))


def test_min_accuracy_removes_less_accurate_variants():
    assert names(choose(Budget(min_accuracy=96.0))) == ["fp32", "fp16"]


def test_no_variant_can_ever_fit():
    with pytest.raises(BudgetUnsatisfiableError) as info:
        choose(Budget(latency_budget_s=0.015, min_accuracy=97.5))
    message = str(info.value)
    assert "fp32 profiled p50 20.0 ms > budget 15.0 ms" in message
    assert "fp16 quality 97 < min_accuracy 97.5" in message
    assert "int8 quality 95 < min_accuracy 97.5" in message


def test_memory_budget_message():
    with pytest.raises(
        BudgetUnsatisfiableError, match="int8 needs 16.0 MiB GPU memory > budget 1.0 MiB"
    ):
        choose(Budget(gpu_memory_budget_bytes=MIB))


def test_work_ahead_degrades_and_its_end_climbs_back():
    budget = Budget(latency_budget_s=0.040)
    assert choose(budget).ranked[0].variant.name == "fp32"
    # 15 ms of work ahead in the shared pool: fp32 (30 ms tail) no longer fits, fp16 does.
    busy = {v.model_name: idle(v.name, wait_ms=15) for v in LADDER}
    loaded = choose(budget, busy)
    assert (loaded.ranked[0].variant.name, loaded.reason) == ("fp16", "load")
    assert "fp32 predicted 45.0 ms > budget 40.0 ms (15.0 ms waiting" in loaded.detail
    assert choose(budget, {}).ranked[0].variant.name == "fp32"


def test_measured_slowness_degrades():
    budget = Budget(latency_budget_s=0.040)
    slow = {"fam__fp32": idle("fp32", slower=2.0)}  # running twice as slow as profiled
    choice = choose(budget, slow)
    assert (choice.ranked[0].variant.name, choice.reason) == ("fp16", "load")


def test_time_already_spent_counts_against_the_budget():
    budget = Budget(latency_budget_s=0.040)
    assert choose(budget, elapsed_s=0.005).ranked[0].variant.name == "fp32"
    assert choose(budget, elapsed_s=0.015).ranked[0].variant.name == "fp16"


def test_time_spent_waiting_in_the_gateway_is_loads_doing_not_the_budgets():
    # fp32's idle tail (30 ms) fits the 40 ms budget; 15 ms already spent leaves 25 ms.
    choice = choose(Budget(latency_budget_s=0.040), elapsed_s=0.015)
    assert (choice.ranked[0].variant.name, choice.reason) == ("fp16", "load")
    # Nothing fits what is left of the budget: a shed (load), not an impossible budget.
    with pytest.raises(CapacityExhaustedError):
        choose(Budget(latency_budget_s=0.040), elapsed_s=0.036)


def test_in_flight_limit_excludes_a_variant():
    choice = choose(estimates={"fam__fp32": idle("fp32", in_flight=4)})
    assert names(choice) == ["fp16", "int8"]
    assert choice.reason == "load"
    assert "fp32 at its in-flight limit (4)" in choice.detail


def test_fits_but_not_now_is_capacity_exhausted():
    busy = {v.model_name: idle(v.name, wait_ms=100) for v in LADDER}
    with pytest.raises(
        CapacityExhaustedError, match="every variant of 'fam' that meets the budget is busy"
    ):
        choose(Budget(latency_budget_s=0.050), busy)


def test_without_a_latency_budget_waiting_never_sheds():
    busy = {v.model_name: idle(v.name, wait_ms=10_000) for v in LADDER}
    assert names(choose(Budget(), busy)) == ["fp32", "fp16", "int8"]


def test_pinned_variant_reason_and_budget():
    choice = choose(Budget(latency_budget_s=1.0), variants=[INT8], pinned=True)
    assert (names(choice), choice.reason) == (["int8"], "pinned")
    with pytest.raises(BudgetUnsatisfiableError):
        choose(Budget(latency_budget_s=0.001), variants=[INT8], pinned=True)
    with pytest.raises(CapacityExhaustedError):
        choose(Budget(latency_budget_s=0.010), {"fam__int8": idle("int8", wait_ms=20)}, [INT8])


def test_variant_without_a_profile_always_fits():
    bare = FP32.model_copy(update={"latency": []})
    choice = select(
        "fam",
        Budget(latency_budget_s=0.001),
        [bare],
        {},
        max_in_flight_per_variant=4,
    )
    assert names(choice) == ["fp32"]


def test_busy_compute_ranks_the_cheapest_fitting_variant_first():
    budget = Budget(latency_budget_s=0.040)
    calm = choose(budget, utilization=0.5, target_utilization=0.85)
    assert calm.ranked[0].variant.name == "fp32"
    busy = choose(budget, utilization=0.9, target_utilization=0.85)
    assert names(busy) == ["int8", "fp16", "fp32"]
    assert busy.reason == "load"
    assert "the compute is 90 % busy (target 85 %): int8" in busy.detail
    # A budget only fp32 meets (min_accuracy) still gets fp32; a pin is a pin.
    assert choose(Budget(min_accuracy=98.0), utilization=2.0).ranked[0].variant.name == "fp32"
    pinned = choose(budget, variants=[FP32], pinned=True, utilization=2.0)
    assert pinned.reason == "pinned"


def test_with_room_a_soft_request_only_a_median_fits_runs_on_the_likeliest_variant():
    # Twice as slow, 14 ms ahead: every tail misses a 25 ms budget (int8's is 14 + 12 ms),
    # but int8's median (14 + 8 ms) fits, and the compute has room: best effort, not a shed.
    busy = {v.model_name: idle(v.name, wait_ms=14, slower=2.0) for v in LADDER}
    budget = Budget(latency_budget_s=0.025, hard=False)
    choice = choose(budget, busy, utilization=0.5, target_utilization=0.85)
    assert names(choice) == ["int8"]
    assert not choice.ranked[0].at_tail
    assert choice.reason == "load"
    assert "int8 meets it at its median and the compute has room" in choice.detail
    # A saturated compute keeps its capacity for requests that fit: shed.
    with pytest.raises(CapacityExhaustedError):
        choose(budget, busy, utilization=0.9, target_utilization=0.85)
    # No median fits either: shed.
    late = {v.model_name: idle(v.name, wait_ms=30) for v in LADDER}
    with pytest.raises(CapacityExhaustedError):
        choose(budget, late, utilization=0.5, target_utilization=0.85)
    # A hard budget's late answer is useless: never run on a median's chance.
    with pytest.raises(CapacityExhaustedError):
        choose(Budget(latency_budget_s=0.025, hard=True), busy, utilization=0.5)
    # What fits at its tail is never best effort.
    assert choose(Budget(latency_budget_s=0.050, hard=False)).ranked[0].at_tail
