"""Live statistics with an injected clock."""

from __future__ import annotations

import pytest

from gateway.routing.live import LiveStats, VariantLive, percentile


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_in_flight_and_window_percentiles():
    clock = Clock()
    live = LiveStats(window_s=10.0, clock=clock)
    live.begin("a")
    live.begin("a")
    assert live.in_flight("a") == 2
    for latency_ms in range(1, 101):
        live.begin("a")
        live.end("a", latency_ms / 1000)
    live.end("a", 0.5)
    snap = live.snapshot(["a", "b"], {"a": 3})["a"]
    assert snap.in_flight == 1
    assert snap.queue_depth == 3
    assert snap.samples == 101
    assert snap.latency_p50_s == pytest.approx(0.051)
    assert snap.latency_p95_s == pytest.approx(0.096)
    assert snap.last_sample_s == clock.now
    assert snap.error_rate == 0.0


def test_unknown_key_is_idle_with_its_queue():
    live = LiveStats(window_s=1.0, clock=Clock())
    assert live.snapshot(["x"], {"x": 2})["x"] == VariantLive(queue_depth=2)


def test_old_samples_leave_the_window():
    clock = Clock()
    live = LiveStats(window_s=5.0, clock=clock)
    live.begin("a")
    live.end("a", 1.0)
    clock.now += 3
    live.begin("a")
    live.end("a", 0.1)
    assert live.snapshot(["a"])["a"].samples == 2
    clock.now += 3  # the first sample is now 6 s old
    snap = live.snapshot(["a"])["a"]
    assert (snap.samples, snap.latency_p95_s) == (1, pytest.approx(0.1))
    clock.now += 10
    assert live.snapshot(["a"])["a"] == VariantLive()


def test_errors_count_toward_the_rate_not_the_latency():
    live = LiveStats(window_s=10.0, clock=Clock())
    for ok in (True, True, False, False):
        live.begin("a")
        live.end("a", 5.0 if not ok else 0.01, ok=ok)
    snap = live.snapshot(["a"])["a"]
    assert snap.error_rate == 0.5
    assert snap.latency_p95_s == pytest.approx(0.01)


def test_end_without_latency_records_no_sample():
    live = LiveStats(window_s=10.0, clock=Clock())
    live.begin("a")
    live.end("a", None)
    assert live.snapshot(["a"])["a"] == VariantLive()


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        LiveStats(window_s=0)


@pytest.mark.parametrize("q", [0, 25, 50, 95, 99, 100])
def test_percentile_matches_numpy(q):
    import numpy as np

    values = sorted(np.random.default_rng(0).random(37).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
