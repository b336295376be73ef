"""The pure selector: ranking, reasons, predictions and errors, with an injected clock."""

from __future__ import annotations

import pytest

from gateway.errors import BudgetUnsatisfiableError, CapacityExhaustedError
from gateway.manifest import Artifact, LatencyPoint, Variant
from gateway.routing.live import VariantLive
from gateway.routing.selector import SelectorConfig, contention, predict_latency_s, select
from gateway.types import Budget

MIB = 2**20
CONFIG = SelectorConfig(
    max_in_flight_per_variant=4, parallelism=2, observed_weight=0.5, min_samples=4, window_s=10.0
)


def point(batch: int, concurrency: int, p50_s: float) -> LatencyPoint:
    return LatencyPoint(
        batch_size=batch,
        concurrency=concurrency,
        runs=10,
        p50_s=p50_s,
        p95_s=p50_s * 1.5,
        p99_s=p50_s * 2,
        throughput_per_s=batch / p50_s,
    )


def variant(name: str, quality: float, memory_mb: int, p50_s: float) -> Variant:
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
        latency=[
            point(1, 1, p50_s),
            point(4, 1, 3 * p50_s),
            point(1, 2, 2 * p50_s),
            point(1, 4, 4 * p50_s),
        ],
        resident_memory_bytes=1,
        gpu_memory_bytes=memory_mb * MIB,
    )


FP32 = variant("fp32", 98.0, 64, 0.020)  # p95 30 ms idle
FP16 = variant("fp16", 97.0, 32, 0.010)  # p95 15 ms
INT8 = variant("int8", 95.0, 16, 0.004)  # p95 6 ms
LADDER = [INT8, FP32, FP16]  # order of the input must not matter


UNBOUNDED = Budget()


def choose(budget=UNBOUNDED, live=None, now=100.0, variants=LADDER, **kw):
    return select("fam", budget, variants, live or {}, now, CONFIG, **kw)


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


def test_idle_p95_over_budget_is_the_budgets_doing_not_loads():
    # fp32: p50 20 ms is within 25 ms, but even idle its p95 (30 ms) is not.
    choice = choose(Budget(latency_budget_s=0.025))
    assert choice.reason == "latency-budget"
    assert "fp32 predicted 30.0 ms > budget 25.0 ms with 0 in flight" in choice.detail


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


def test_load_degrades_and_recovery_climbs_back():
    budget = Budget(latency_budget_s=0.040)
    assert choose(budget).ranked[0].variant.name == "fp32"
    # One request running on fp32: the profile's concurrency-2 point doubles its p95 to 60 ms.
    busy = {"fam__fp32": VariantLive(in_flight=1)}
    loaded = choose(budget, busy)
    assert (loaded.ranked[0].variant.name, loaded.reason) == ("fp16", "load")
    assert "fp32 predicted 60.0 ms > budget 40.0 ms with 1 in flight" in loaded.detail
    assert choose(budget, {"fam__fp32": VariantLive(in_flight=0)}).ranked[0].variant.name == "fp32"


def test_in_flight_limit_excludes_a_variant():
    live = {"fam__fp32": VariantLive(in_flight=4)}
    choice = choose(live=live)
    assert names(choice) == ["fp16", "int8"]
    assert choice.reason == "load"
    assert "fp32 at its in-flight limit (4)" in choice.detail


def test_fits_but_not_now_is_capacity_exhausted():
    live = {v.model_name: VariantLive(in_flight=4) for v in LADDER}
    with pytest.raises(
        CapacityExhaustedError, match="every variant of 'fam' that meets the budget is busy"
    ):
        choose(live=live)


def test_pinned_variant_reason_and_budget():
    choice = choose(Budget(latency_budget_s=1.0), variants=[INT8], pinned=True)
    assert (names(choice), choice.reason) == (["int8"], "pinned")
    with pytest.raises(BudgetUnsatisfiableError):
        choose(Budget(latency_budget_s=0.001), variants=[INT8], pinned=True)


def test_batch_size_uses_the_batch_profile_and_scales_beyond_it():
    assert choose(batch_size=4).ranked[0].predicted_latency_s == pytest.approx(0.090)
    assert choose(batch_size=8).ranked[0].predicted_latency_s == pytest.approx(0.180)
    assert choose(Budget(latency_budget_s=0.1), batch_size=4).ranked[0].variant.name == "fp32"
    assert choose(Budget(latency_budget_s=0.05), batch_size=4).ranked[0].variant.name == "fp16"


def test_contention_interpolates_and_extrapolates():
    points = FP32.latency
    assert contention(points, 1) == 1.0
    assert contention(points, 2) == pytest.approx(2.0)
    assert contention(points, 3) == pytest.approx(3.0)
    assert contention(points, 8) == pytest.approx(8.0)
    assert contention([point(1, 1, 0.01)], 5) == pytest.approx(5.0)


def test_observed_latency_blends_by_samples_and_fades_with_age():
    idle = predict_latency_s(FP32, VariantLive(), 1, 100.0, CONFIG)
    assert idle == pytest.approx(0.030)
    seen = VariantLive(samples=4, latency_p50_s=0.08, latency_p95_s=0.090, last_sample_s=100.0)
    assert predict_latency_s(FP32, seen, 1, 100.0, CONFIG) == pytest.approx(0.060)
    few = VariantLive(samples=2, latency_p50_s=0.08, latency_p95_s=0.090, last_sample_s=100.0)
    assert predict_latency_s(FP32, few, 1, 100.0, CONFIG) == pytest.approx(0.045)
    # Half a window later the observation counts half as much; a full window later not at all.
    assert predict_latency_s(FP32, seen, 1, 105.0, CONFIG) == pytest.approx(0.045)
    assert predict_latency_s(FP32, seen, 1, 110.0, CONFIG) == pytest.approx(0.030)


def test_observed_slowness_degrades_then_fades_back():
    budget = Budget(latency_budget_s=0.050)
    slow = {
        "fam__fp32": VariantLive(samples=8, latency_p50_s=0.1, latency_p95_s=0.1, last_sample_s=0.0)
    }
    assert choose(budget, slow, now=1.0).ranked[0].variant.name == "fp16"
    assert choose(budget, slow, now=9.0).ranked[0].variant.name == "fp32"


def test_queue_adds_waiting_time():
    # Two runs queued ahead, two workers: one profiled median (20 ms) of waiting.
    queued = VariantLive(in_flight=2, queue_depth=2)
    assert predict_latency_s(FP32, queued, 1, 0.0, CONFIG) == pytest.approx(0.030 + 0.020)


def test_variant_without_profile_uses_observations():
    bare = FP32.model_copy(update={"latency": []})
    assert predict_latency_s(bare, VariantLive(), 1, 0.0, CONFIG) == 0.0
    seen = VariantLive(samples=4, latency_p50_s=0.01, latency_p95_s=0.02, last_sample_s=0.0)
    assert predict_latency_s(bare, seen, 1, 0.0, CONFIG) == pytest.approx(0.02)
    assert choose(Budget(latency_budget_s=0.001), variants=[bare]).ranked[0].variant.name == "fp32"
