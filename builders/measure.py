"""Measure one candidate variant: its metric, its latency profile and its memory.

An ONNX candidate runs on ONNX Runtime on the CPU, every graph of a multi-graph variant in a
session of its own (``GraphSessions``), and its GPU memory is estimated from its graphs
(:mod:`builders.gpu_memory`); a TensorRT candidate runs on the GPU that built it, and its GPU
memory is measured (:mod:`builders.convert.trt_runtime`). Either way the same task code
evaluates and profiles it, so what is measured is what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builders.gpu_memory import estimate_variant_gpu_memory
from builders.profile import (
    measure_resident_memory,
    profile_latency,
    profile_sizes,
    profiled_item_size,
)
from builders.spec import BuildSpec, ProfileSettings
from builders.zoo.api import ShapeRange, ZooFamily
from gateway.layout import Runtime
from gateway.manifest import LatencyPoint, SizePoint
from gateway.taskio import TASK_IO
from gateway.tasks.base import MAIN_GRAPH, RunGraphs, Task, single_graph
from gateway.tasks.onnx_runner import GraphSessions

Progress = Callable[[str], None]


@dataclass
class Candidate:
    """A derived variant (ONNX graphs, or a TensorRT engine) waiting to be measured."""

    name: str
    graphs: dict[str, Path]
    """Its graph files by graph name: ``{"model": path}`` for a one-graph variant."""
    precision: str
    quantization: str = "none"
    pruning_ratio: float = 0.0
    parameters: int = 0
    notes: list[str] = field(default_factory=list)
    runtime: Runtime = "onnx"
    sparsity: str = "none"

    @property
    def graph(self) -> Path:
        """The graph of a one-graph variant (the first graph of a multi-graph one)."""
        return self.graphs.get(MAIN_GRAPH) or next(iter(self.graphs.values()))

    @property
    def multi_graph(self) -> bool:
        """Whether the variant has several graphs (Whisper's encoder and decoder)."""
        return set(self.graphs) != {MAIN_GRAPH}

    @property
    def size_bytes(self) -> int:
        """Bytes of all its graph files."""
        return sum(p.stat().st_size for p in self.graphs.values())


@dataclass(frozen=True)
class GpuMemory:
    """A variant's GPU memory, in the manifest's terms (see ``Variant.gpu_memory_bytes``)."""

    weights_bytes: int
    activations_bytes: int
    source: Literal["measured", "estimated"]

    @property
    def total_bytes(self) -> int:
        """Weights plus activations."""
        return self.weights_bytes + self.activations_bytes


@dataclass(frozen=True)
class SizeProfile:
    """Latency against item size, for a task whose items differ in cost (see the manifest)."""

    unit: str | None = None
    """The manifest's ``size_unit``; None: every item costs the same, nothing was timed."""
    points: list[SizePoint] = field(default_factory=list)
    profiled_item_size: float | None = None


@dataclass(frozen=True)
class Measurement:
    """Everything measured about one candidate."""

    metrics: dict[str, float]
    latency: list[LatencyPoint]
    resident_bytes: int
    gpu: GpuMemory
    sizes: SizeProfile


def largest_shapes(ranges: Mapping[str, ShapeRange]) -> dict[str, tuple[int, ...]]:
    """Each input at its largest shape: what GPU memory is estimated at."""
    return {name: shape.max for name, shape in ranges.items()}


def profile_settings(spec: BuildSpec, family: ZooFamily) -> ProfileSettings:
    """The spec's profile settings, or the family's own when the spec keeps the defaults.

    A family whose requests take seconds (speech: 30 s encoder windows) sets shorter
    profiles than the default, which would time each point for minutes.
    """
    own: ProfileSettings | None = getattr(family, "profile_settings", None)
    return own if own is not None and spec.profile == ProfileSettings() else spec.profile


def _size_profile(
    run_graph: RunGraphs,
    family: ZooFamily,
    task: Task,
    items: list[Any],
    settings: ProfileSettings,
) -> SizeProfile:
    io_type = TASK_IO.get(family.task)
    if io_type is None or io_type.size_unit is None:
        return SizeProfile()
    item_size = io_type(family.assets_dir).item_size
    points = profile_sizes(run_graph, task, items, item_size, settings)
    return SizeProfile(io_type.size_unit, points, profiled_item_size(items, item_size))


def _runners(candidate: Candidate, settings: ProfileSettings) -> tuple[RunGraphs, RunGraphs]:
    """Graph runners for evaluation and for profiling (ONNX profiles on fixed threads)."""
    if candidate.runtime == "tensorrt":
        from builders.convert.trt_runtime import EngineRunner

        engine = single_graph(EngineRunner(candidate.graph))
        return engine, engine
    profiled = GraphSessions(candidate.graphs, settings.intra_op_threads)
    return GraphSessions(candidate.graphs), profiled


def _resident(candidate: Candidate, family: ZooFamily, workdir: Path) -> int:
    """Resident growth of loading the candidate's graphs and running each once."""
    if candidate.multi_graph:
        examples = family.example_feeds(candidate.graphs)  # type: ignore[attr-defined]
        return sum(
            measure_resident_memory(path, examples[name], workdir)
            for name, path in candidate.graphs.items()
        )
    feeds: dict[str, Any] = dict(next(iter(family.calibration_inputs(1))))
    return measure_resident_memory(candidate.graph, feeds, workdir)


def _memory(
    candidate: Candidate,
    family: ZooFamily,
    ranges: Mapping[str, ShapeRange],
    workdir: Path,
) -> tuple[int, GpuMemory]:
    """Resident growth and GPU memory of a candidate."""
    if candidate.runtime == "tensorrt":
        from builders.convert.trt_runtime import measure_engine_memory

        engine = measure_engine_memory(candidate.graph)
        gpu = GpuMemory(engine.weights_bytes, engine.activation_bytes, "measured")
        return engine.resident_bytes, gpu
    resident = _resident(candidate, family, workdir)
    estimate = estimate_variant_gpu_memory(candidate.graphs.values(), largest_shapes(ranges))
    gpu = GpuMemory(estimate.weights_bytes, estimate.activations_bytes, "estimated")
    return resident, gpu


def measure(
    candidate: Candidate,
    spec: BuildSpec,
    family: ZooFamily,
    items: list[Any],
    ranges: Mapping[str, ShapeRange],
    workdir: Path,
    progress: Progress,
) -> Measurement:
    """Evaluate, profile and size ``candidate``."""
    settings = profile_settings(spec, family)
    evaluated, profiled = _runners(candidate, settings)
    progress(f"{family.name}: evaluating {candidate.name}")
    metrics = family.evaluate(evaluated, spec.eval_limit)
    progress(f"{family.name}: profiling {candidate.name}")
    task = family.make_task(family.assets_dir)
    latency = profile_latency(profiled, task, items, settings, spec.max_batch_size)
    sizes = _size_profile(profiled, family, task, items, settings)
    resident, gpu = _memory(candidate, family, ranges, workdir)
    return Measurement(metrics, latency, resident, gpu, sizes)
