"""The size profile: single items timed against their size, grouped by size."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from builders.profile import SIZE_BINS, profile_sizes, profiled_item_size
from builders.spec import ProfileSettings
from gateway.manifest import LatencyPoint
from gateway.routing.service_time import fit_profile
from gateway.tasks.base import RunGraphs, Tensor

QUICK = ProfileSettings(warmup_runs=0, min_runs=3, max_runs=6, time_per_point_s=0.01)


class SleepingTask:
    """A task whose item ``n`` takes ``n`` milliseconds in its graph: cost known exactly."""

    def run(self, items: list[Any], run_graph: RunGraphs) -> list[Any]:
        return [run_graph({"ms": np.array(float(n))})["ms"] for n in items]


def sleeping_graph(inputs: Mapping[str, Tensor], graph: str = "model") -> Mapping[str, Tensor]:
    time.sleep(float(inputs["ms"]) / 1000)
    return inputs


def test_points_stand_at_each_size_group_s_median_and_grow_with_it() -> None:
    items = [8, 1, 2, 16, 4, 1, 2, 32]  # milliseconds, out of order
    points = profile_sizes(sleeping_graph, SleepingTask(), items, float, QUICK)
    assert len(points) == SIZE_BINS
    assert [p.size for p in points] == [1.0, 2.0, 6.0, 24.0]  # medians of the sorted pairs
    for point in points:
        assert point.runs >= QUICK.min_runs
        assert point.p50_s <= point.p95_s
    assert points[0].p50_s < points[-1].p50_s
    assert points[-1].p50_s >= 0.008  # its items sleep 16 and 32 ms, taken in turn


def test_fewer_items_than_groups_give_a_point_each() -> None:
    points = profile_sizes(sleeping_graph, SleepingTask(), [3, 1], float, QUICK)
    assert [p.size for p in points] == [1.0, 3.0]


def test_the_profiled_size_is_the_median_of_the_items_behind_the_batch_points() -> None:
    # Only the first 16 items are behind the batch points; a 17th does not move the median.
    items = list(range(1, 17)) + [1000]
    assert profiled_item_size(items, float) == 8.5


def test_routing_predicts_from_the_size_profile_a_long_item_long_and_a_short_one_short() -> None:
    points = profile_sizes(sleeping_graph, SleepingTask(), [2, 2, 20, 20], float, QUICK)
    short = points[0]
    alone = LatencyPoint(
        batch_size=1,
        concurrency=1,
        runs=short.runs,
        p50_s=short.p50_s,
        p95_s=short.p95_s,
        p99_s=short.p95_s,
        throughput_per_s=1 / short.p50_s,
    )
    fit = fit_profile([alone], points, profiled_size=2.0)
    assert fit.p50_s(1, 20.0) > 3 * fit.p50_s(1, 2.0)
