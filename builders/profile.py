"""Latency, throughput and memory of a variant, measured at task level.

A request is what a client sends: ``batch_size`` task items (images, waveforms, sentences)
through the task's pre/post-processing and the graph, exactly as the gateway serves them. The
time spent inside the graph is recorded too, because for small models the task's own work
(features, the decoding loops) can hide how much faster a smaller graph is. Families whose
items differ in cost (sentences, recordings) are also timed item by item against their size.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from builders.spec import ProfileSettings
from gateway.manifest import LatencyPoint, SizePoint
from gateway.tasks.base import MAIN_GRAPH, RunGraphs, Task, Tensor


def _percentiles(samples_s: Sequence[float]) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(np.asarray(samples_s), [50, 95, 99])
    return float(p50), float(p95), float(p99)


def _timed_loop(request: Callable[[], None], settings: ProfileSettings) -> list[float]:
    """Run ``request`` until min_runs are done and the point's time is up (or max_runs)."""
    samples: list[float] = []
    deadline = time.perf_counter() + settings.time_per_point_s
    while len(samples) < settings.max_runs:
        start = time.perf_counter()
        request()
        samples.append(time.perf_counter() - start)
        if len(samples) >= settings.min_runs and time.perf_counter() >= deadline:
            break
    return samples


class GraphClock:
    """A graph runner that adds up the time spent in the graph it wraps (one thread each)."""

    def __init__(self, run_graph: RunGraphs) -> None:
        self.run_graph = run_graph
        self.seconds = 0.0
        """Time inside the graph since this was last set to 0."""

    def __call__(
        self, inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
    ) -> Mapping[str, Tensor]:
        """Run ``graph`` on ``inputs`` and add its time to ``seconds``."""
        start = time.perf_counter()
        try:
            return self.run_graph(inputs, graph)
        finally:
            self.seconds += time.perf_counter() - start


PROFILED_ITEMS = 16
"""Sample items behind every batch and concurrency point (the same ones at every point)."""

SIZE_BINS = 4
"""Groups of sample items, by size, behind the size curve."""


def _requests(items: list[Any], batch: int) -> list[list[Any]]:
    """The requests timed at ``batch``.

    Real items, not one repeated input, taken in turn from the same first
    :data:`PROFILED_ITEMS` at every batch size, so the points compare.
    """
    pool = items[:PROFILED_ITEMS]
    return [
        [pool[(i * batch + j) % len(pool)] for j in range(batch)] for i in range(PROFILED_ITEMS)
    ]


def profiled_item_size(items: list[Any], item_size: Callable[[Any], float]) -> float:
    """The item size the batch points stand for.

    The median size of the items behind them: a p50 over items in turn is about the median
    item's time.
    """
    return float(np.median([item_size(request[0]) for request in _requests(items, 1)]))


def _point(
    task: Task,
    run_graph: RunGraphs,
    items: list[Any],
    batch: int,
    threads: int,
    settings: ProfileSettings,
) -> LatencyPoint:
    requests = _requests(items, batch)
    for r in requests[: settings.warmup_runs]:
        task.run(r, run_graph)

    per_thread: list[list[float]] = [[] for _ in range(threads)]
    in_graph: list[list[float]] = [[] for _ in range(threads)]

    def worker(index: int) -> None:
        sent = [index]
        clock = GraphClock(run_graph)

        def one() -> None:
            clock.seconds = 0.0
            task.run(requests[sent[0] % len(requests)], clock)
            in_graph[index].append(clock.seconds)
            sent[0] += 1

        per_thread[index] = _timed_loop(one, settings)

    start = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    wall_s = time.perf_counter() - start
    samples = [s for thread_samples in per_thread for s in thread_samples]
    p50, p95, p99 = _percentiles(samples)
    return LatencyPoint(
        batch_size=batch,
        concurrency=threads,
        runs=len(samples),
        p50_s=p50,
        p95_s=p95,
        p99_s=p99,
        throughput_per_s=len(samples) * batch / wall_s,
        graph_p50_s=float(np.median([s for thread in in_graph for s in thread])),
    )


def profile_latency(
    run_graph: RunGraphs,
    task: Task,
    items: list[Any],
    settings: ProfileSettings,
    max_batch_size: int,
) -> list[LatencyPoint]:
    """Time the variant at each batch size (concurrency 1) and each concurrency (batch 1).

    ``run_graph`` runs the variant's graphs (ONNX Runtime with ``settings.intra_op_threads``
    threads, or a TensorRT engine), so every runtime is timed through the same task code.
    """
    if not items:
        raise ValueError("profiling needs at least one sample item")
    points = [
        _point(task, run_graph, items, batch, 1, settings)
        for batch in settings.batch_sizes
        if batch <= max_batch_size
    ]
    points += [
        _point(task, run_graph, items, 1, threads, settings)
        for threads in settings.concurrency_levels
        if threads > 1
    ]
    return points


def _groups_in_turn(
    task: Task, run_graph: RunGraphs, groups: list[list[Any]], settings: ProfileSettings
) -> list[list[float]]:
    """Time single items, one from each group in turn, each group's items in turn too.

    Interleaved, a slow spell of the machine lands on every group alike instead of on
    whichever group was being timed then (which could make short items look longer than
    long ones). Each group gets ``min_runs`` to ``max_runs`` runs; together they run for the
    time of one point per group.
    """
    samples: list[list[float]] = [[] for _ in groups]
    deadline = time.perf_counter() + settings.time_per_point_s * len(groups)
    turn = 0
    while min(len(s) for s in samples) < settings.max_runs:
        for group, timed in zip(groups, samples, strict=True):
            start = time.perf_counter()
            task.run([group[turn % len(group)]], run_graph)
            timed.append(time.perf_counter() - start)
        turn += 1
        enough = min(len(s) for s in samples) >= settings.min_runs
        if enough and time.perf_counter() >= deadline:
            break
    return samples


def profile_sizes(
    run_graph: RunGraphs,
    task: Task,
    items: list[Any],
    item_size: Callable[[Any], float],
    settings: ProfileSettings,
) -> list[SizePoint]:
    """Time single items (batch 1, concurrency 1) against their size, for size-aware routing.

    The items are sorted by size and cut into :data:`SIZE_BINS` groups of equal count; the
    groups are timed in turn, each with its items in turn, and each group's point stands at
    its median size (where the p50 of items in turn falls). Run after
    :func:`profile_latency`, on warm graphs.
    """
    sizes = np.asarray([item_size(item) for item in items], dtype=np.float64)
    order = np.argsort(sizes, kind="stable")
    groups = np.array_split(order, min(SIZE_BINS, len(items)))
    timed = _groups_in_turn(task, run_graph, [[items[i] for i in g] for g in groups], settings)
    points: list[SizePoint] = []
    for group, samples in zip(groups, timed, strict=True):
        p50, p95, _ = _percentiles(samples)
        size = float(np.median(sizes[group]))
        points.append(SizePoint(size=size, runs=len(samples), p50_s=p50, p95_s=p95))
    return points


_MEMORY_SCRIPT = """
import json, resource, sys
import numpy as np
import onnxruntime as ort
def current_rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
before = current_rss_kib()
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
feeds = dict(np.load(sys.argv[2]))
session.run(None, feeds)
after = current_rss_kib()
print(json.dumps({"resident_bytes": max(after - before, 0) * 1024}))
"""


def measure_in_child(script: str, *args: str, timeout_s: float = 600) -> dict[str, int]:
    """Run a measuring ``script`` in a fresh interpreter; its last stdout line is JSON.

    A fresh process, so what earlier variants loaded does not hide this one's memory.
    """
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=True,
    )
    result: dict[str, int] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def measure_resident_memory(graph: Path, inputs: dict[str, Any], workdir: Path) -> int:
    """Resident-memory growth of loading the graph and running one batch, in bytes."""
    feeds = workdir / f"{graph.stem}.feeds.npz"
    np.savez(feeds, **inputs)
    return int(measure_in_child(_MEMORY_SCRIPT, str(graph), str(feeds))["resident_bytes"])


def measure_runtime_memory(workdir: Path) -> int:
    """Resident growth of an ONNX Runtime session on a one-node graph: the runtime's own cost.

    What every model instance pays whatever its graph (session, arenas, thread pools), in
    bytes, measured the way :func:`measure_resident_memory` measures a variant.
    """
    graph = workdir / "runtime-identity.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    model = onnx.helper.make_model(
        onnx.helper.make_graph(
            [node],
            "identity",
            [value("x", onnx.TensorProto.FLOAT, [1])],
            [value("y", onnx.TensorProto.FLOAT, [1])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
        ir_version=8,  # what opset 17 needs, and what every ONNX Runtime reads
    )
    onnx.save(model, str(graph))
    return measure_resident_memory(graph, {"x": np.zeros(1, np.float32)}, workdir)
