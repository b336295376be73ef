"""Measure one candidate variant: its metric, its latency profile and its memory.

An ONNX candidate runs on ONNX Runtime on the CPU, and its GPU memory is estimated from its
graph (:mod:`builders.gpu_memory`); a TensorRT candidate runs on the GPU that built it, and
its GPU memory is measured (:mod:`builders.convert.trt_runtime`). Either way the same task
code evaluates and profiles it, so what is measured is what is served.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builders.gpu_memory import estimate_gpu_memory
from builders.profile import measure_resident_memory, profile_latency
from builders.spec import BuildSpec
from builders.zoo.api import ShapeRange, ZooFamily
from gateway.layout import Runtime
from gateway.manifest import LatencyPoint
from gateway.tasks.base import RunGraph
from gateway.tasks.onnx_runner import onnx_graph_runner

Progress = Callable[[str], None]


@dataclass
class Candidate:
    """A derived graph (ONNX) or engine (TensorRT) waiting to be measured."""

    name: str
    graph: Path
    precision: str
    quantization: str = "none"
    pruning_ratio: float = 0.0
    parameters: int = 0
    notes: list[str] = field(default_factory=list)
    runtime: Runtime = "onnx"
    sparsity: str = "none"


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
class Measurement:
    """Everything measured about one candidate."""

    metrics: dict[str, float]
    latency: list[LatencyPoint]
    resident_bytes: int
    gpu: GpuMemory


def largest_shapes(ranges: Mapping[str, ShapeRange]) -> dict[str, tuple[int, ...]]:
    """Each input at its largest shape: what GPU memory is estimated at."""
    return {name: shape.max for name, shape in ranges.items()}


def _runners(candidate: Candidate, spec: BuildSpec) -> tuple[RunGraph, RunGraph]:
    """Graph runners for evaluation and for profiling (ONNX profiles on fixed threads)."""
    if candidate.runtime == "tensorrt":
        from builders.convert.trt_runtime import EngineRunner

        engine = EngineRunner(candidate.graph)
        return engine, engine
    profiled = onnx_graph_runner(candidate.graph, spec.profile.intra_op_threads)
    return onnx_graph_runner(candidate.graph), profiled


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
    feeds: dict[str, Any] = dict(next(iter(family.calibration_inputs(1))))
    resident = measure_resident_memory(candidate.graph, feeds, workdir)
    estimate = estimate_gpu_memory(candidate.graph, largest_shapes(ranges))
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
    evaluated, profiled = _runners(candidate, spec)
    progress(f"{family.name}: evaluating {candidate.name}")
    metrics = family.evaluate(evaluated, spec.eval_limit)
    progress(f"{family.name}: profiling {candidate.name}")
    task = family.make_task(family.assets_dir)
    latency = profile_latency(profiled, task, items, spec.profile, spec.max_batch_size)
    resident, gpu = _memory(candidate, family, ranges, workdir)
    return Measurement(metrics, latency, resident, gpu)
