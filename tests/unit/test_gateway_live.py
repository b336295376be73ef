"""Service-time models (profile fit, size scaling, online correction) and live load."""

from __future__ import annotations

import math

import pytest

from gateway.manifest import LatencyPoint, SizePoint
from gateway.routing.live import LiveLoad, WorkRate
from gateway.routing.loop_lag import LoopLag
from gateway.routing.service_time import ServiceModel, fit_profile


def point(batch: int, p50_s: float, concurrency: int = 1) -> LatencyPoint:
    return LatencyPoint(
        batch_size=batch,
        concurrency=concurrency,
        runs=10,
        p50_s=p50_s,
        p95_s=p50_s * 1.5,
        p99_s=p50_s * 2,
        throughput_per_s=batch / p50_s,
    )


def test_fit_is_fixed_plus_per_row_with_the_profiles_tail():
    fit = fit_profile([point(1, 0.012), point(4, 0.030), point(8, 0.054), point(1, 0.05, 4)])
    assert fit is not None
    assert fit.fixed_s == pytest.approx(0.006)
    assert fit.per_row_s == pytest.approx(0.006)
    assert fit.p50_s(2) == pytest.approx(0.018)
    assert fit.p95_s(1) == pytest.approx(0.018)  # the batch-1 tail ratio, 1.5


def test_single_point_scales_in_proportion_and_no_profile_is_none():
    fit = fit_profile([point(1, 0.010)])
    assert fit is not None
    assert fit.p50_s(3) == pytest.approx(0.030)
    assert fit_profile([]) is None
    assert fit_profile([point(1, 0.01, concurrency=2)]) is None


def test_a_fit_never_predicts_a_negative_fixed_cost():
    fit = fit_profile([point(1, 0.001), point(8, 0.040)])
    assert fit is not None
    assert fit.fixed_s >= 0
    assert fit.p50_s(1) > 0


def test_size_scales_the_per_row_cost():
    # Latency grows 2 ms per second of audio over a 1 ms fixed part; profiled items are 4 s.
    sizes = [
        SizePoint(size=s, runs=5, p50_s=0.001 + 0.002 * s, p95_s=0.0015 + 0.003 * s)
        for s in (1.0, 4.0, 8.0)
    ]
    fit = fit_profile([point(1, 0.009)], sizes, profiled_size=4.0)
    assert fit is not None
    assert fit.p50_s(1, 4.0) == pytest.approx(0.009)
    assert fit.p50_s(1, 8.0) == pytest.approx(0.017)
    assert fit.p50_s(1, 1.0) == pytest.approx(0.003)
    assert fit.p50_s(1) == pytest.approx(0.009)  # size unknown: a profiled-size item
    assert fit.p50_s(2, 8.0) == pytest.approx(0.018)  # two items of 4 s


def test_a_curved_size_profile_is_followed_between_and_beyond_its_points():
    # Decoding time grows faster than the source: 1, 4, 16 ms at 5, 10, 20 tokens.
    sizes = [
        SizePoint(size=t, runs=5, p50_s=ms / 1000, p95_s=ms / 500)
        for t, ms in ((5, 1.0), (10, 4.0), (20, 16.0))
    ]
    fit = fit_profile([point(1, 0.004)], sizes, profiled_size=10.0)
    assert fit is not None
    assert fit.p50_s(1, 15.0) == pytest.approx(0.010)  # halfway between 4 and 16 ms
    assert fit.p50_s(1, 30.0) == pytest.approx(0.028)  # the last segment, extended
    assert fit.p50_s(1, 2.0) > 0  # never zero or negative below the first point


def test_with_sizes_profiled_the_tail_is_the_spread_within_a_size_group():
    # Short items are fast and long ones slow, so over every size the batch-1 tail is 4x;
    # within a group of one size it is 1.2x (40 runs) and 1.5x (10 runs).
    batch1 = LatencyPoint(
        batch_size=1, concurrency=1, runs=50, p50_s=0.010, p95_s=0.040, p99_s=0.05,
        throughput_per_s=100,
    )  # fmt: skip
    sizes = [
        SizePoint(size=5, runs=40, p50_s=0.008, p95_s=0.0096),
        SizePoint(size=20, runs=10, p50_s=0.030, p95_s=0.045),
    ]
    fit = fit_profile([batch1], sizes, profiled_size=5.0)
    assert fit is not None
    assert fit.tail == pytest.approx((40 * 1.2 + 10 * 1.5) / 50)
    assert fit.p95_s(1, 20.0) == pytest.approx(fit.p50_s(1, 20.0) * 1.26)
    # Without sizes (or without a profiled size) the batch-1 tail stands.
    assert fit_profile([batch1], sizes).tail == pytest.approx(4.0)


def test_observations_correct_the_profile_by_weight_and_samples():
    fit = fit_profile([point(1, 0.010)])
    model = ServiceModel(fit, observed_weight=0.5, min_samples=4)
    assert model.p50_s(1) == pytest.approx(0.010)
    model.observe(1, None, 0.030)  # 3x slower, one sample of four
    assert model.correction() == pytest.approx(1 + 0.5 * 2 * 0.25)
    for _ in range(3):
        model.observe(1, None, 0.030)
    assert model.p50_s(1) == pytest.approx(0.020)  # half of the way to 3x


def test_the_tail_is_learned_and_idle_figures_take_the_lower_of_profile_and_runs():
    fit = fit_profile([point(1, 0.010)])  # profiled tail 1.5x
    model = ServiceModel(fit, observed_weight=1.0, min_samples=5)
    assert model.p95_s(1) == pytest.approx(0.015)
    for i in range(400):
        model.observe(1, None, 0.004 if i % 10 else 0.008)  # 2.5x faster, one run in ten 2x
    assert model.p50_s(1) == pytest.approx(0.0044, rel=0.15)
    assert 0.005 < model.p95_s(1) < 0.0085  # the measured tail, not the profile's 15 ms
    # Faster than profiled: can-ever-fit uses what runs show; slower would not refuse more.
    assert model.predict(1).idle_p50_s == pytest.approx(model.p50_s(1))
    slow = ServiceModel(fit, observed_weight=1.0, min_samples=1)
    slow.observe(1, None, 0.050)
    assert slow.predict(1).idle_p50_s == pytest.approx(0.010)
    assert slow.predict(1).idle_p95_s == pytest.approx(0.015)
    # One run: the profile's tail shape (1.5x) around what it measured.
    assert slow.p95_s(1) == pytest.approx(0.050 * 1.5, rel=0.02)


def test_one_runaway_among_a_variants_first_runs_does_not_make_it_look_slow():
    fit = fit_profile([point(1, 0.010)])  # profiled tail 1.5x
    model = ServiceModel(fit, observed_weight=1.0, min_samples=5)
    model.observe(1, None, 0.100)  # ran on to its output cap: ten times its prediction
    for _ in range(4):
        model.observe(1, None, 0.010)
    assert model.p50_s(1) == pytest.approx(0.010)
    assert model.p95_s(1) < 0.030  # not the runaway's 100 ms
    for _ in range(40):
        model.observe(1, None, 0.010 if _ % 5 else 0.030)  # one run in five 3x slower
    assert model.p95_s(1) == pytest.approx(0.030)  # with enough runs, the measured tail


def test_outliers_are_bounded_and_zero_weight_ignores_observations():
    fit = fit_profile([point(1, 0.010)])
    model = ServiceModel(fit, observed_weight=1.0, min_samples=1)
    model.observe(1, None, 100.0)
    assert model.correction() == pytest.approx(10.0)
    blind = ServiceModel(fit, observed_weight=0.0, min_samples=1)
    blind.observe(1, None, 100.0)
    assert blind.p50_s(1) == pytest.approx(0.010)


def test_without_a_profile_the_model_learns_per_row_time():
    model = ServiceModel(None, observed_weight=1.0, min_samples=1)
    assert model.p50_s(2) == 0.0
    model.observe(2, None, 0.040)
    assert model.p50_s(1) == pytest.approx(0.020)


def test_live_load_counts_per_variant_and_in_all():
    live = LiveLoad()
    live.begin("a")
    live.begin("a")
    live.begin("b")
    live.end("a")
    assert (live.in_flight("a"), live.in_flight("b"), live.total) == (1, 1, 2)
    live.end("x")  # never negative
    assert live.in_flight("x") == 0


def test_loop_lag_follows_a_backlog_not_a_single_slow_step():
    lag = LoopLag(clock=lambda: 0.0, window=5)
    for late in (0.0, 0.0, 0.050, 0.0, 0.0):
        lag.record(late)
    assert lag.lag_s == 0.0  # one slow step
    for _ in range(3):
        lag.record(0.020)
    assert lag.lag_s == pytest.approx(0.020)  # every wake-up late: a backlog
    lag.record(-0.001)  # early wake-ups count as on time
    assert lag.lag_s >= 0.0


def test_work_rate_adds_admitted_work_and_decays():
    now = [0.0]
    rate = WorkRate(clock=lambda: now[0], time_constant_s=1.0)
    for _ in range(10):
        rate.add(0.1)  # one second of work admitted at once
    assert rate.per_s() == pytest.approx(1.0)
    now[0] = 1.0
    assert rate.per_s() == pytest.approx(math.exp(-1.0))


def test_the_tail_follows_the_end_of_a_slowdown():
    fit = fit_profile([point(1, 0.010)])
    model = ServiceModel(fit, observed_weight=1.0, min_samples=5)
    for _ in range(100):
        model.observe(1, None, 0.050)  # five times slower during a burst
    assert model.p95_s(1) == pytest.approx(0.050, rel=0.05)
    for _ in range(64):
        model.observe(1, None, 0.010)  # back to the profile
    assert model.p95_s(1) < 0.015  # within one window of runs, not minutes


def test_measurements_fade_when_no_run_refreshes_them():
    now = [0.0]
    fit = fit_profile([point(1, 0.010)])
    model = ServiceModel(fit, observed_weight=1.0, min_samples=1, stale_s=3.0, clock=lambda: now[0])
    for _ in range(10):
        model.observe(1, None, 0.050)  # a slow spell
    assert model.p50_s(1) == pytest.approx(0.050)
    now[0] = 3.0  # three seconds without a run: a third of the weight left
    assert model.p50_s(1) == pytest.approx(0.010 + 0.040 * math.exp(-1.0))
    now[0] = 30.0
    assert model.p50_s(1) == pytest.approx(0.010, rel=1e-3)  # the profile again
