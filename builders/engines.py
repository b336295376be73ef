"""TensorRT engine variants of a family: which engines, built from which ONNX graphs, how.

Each engine variant mirrors an ONNX variant the build asked for, so the two runtimes can be
compared rung by rung:

- ``fp16`` → ``trt-fp16``: the fp32 graph with fp16 kernels;
- ``int8`` → ``trt-int8``: the fp32 graph in int8 (fp16 where a layer has no int8 kernel),
  entropy-calibrated on the calibration split that ONNX int8 is calibrated on;
- ``pruned`` → ``trt-pruned-NN-sparse``: each structurally pruned fp32 graph, its weights
  made 2:4-sparse where the layers allow, fp16 with sparse kernels.

Every engine has one optimisation profile over the family's batch and length ranges. The
planning is pure; building needs TensorRT and a GPU (:mod:`builders.convert.onnx2trt`).
Engines are built for one-graph variants only: a family whose variants have several graphs
(speech) gets none, and the build says so (``builders.build``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from builders.convert.calibration import CalibrationSet
from builders.convert.onnx2trt import EnginePrecision, EngineSpec, build_engine
from builders.convert.sparsity import sparsify_2_4
from builders.measure import Candidate
from builders.zoo.api import ShapeRange, ZooFamily
from gateway.tasks.base import MAIN_GRAPH

ENGINE_PREFIX = "trt-"
Progress = Callable[[str], None]


@dataclass(frozen=True)
class EnginePlan:
    """One engine variant to build.

    Attributes:
        name: Variant name, e.g. ``trt-int8``.
        source: The ONNX candidate it is built from.
        precision: Engine precision.
        sparse: 2:4-sparsify the weights and allow sparse kernels.
    """

    name: str
    source: str
    precision: EnginePrecision
    sparse: bool = False


def plan_engines(candidates: Sequence[Candidate], variant_kinds: Sequence[str]) -> list[EnginePlan]:
    """The engines mirroring the ONNX variant kinds asked for (see the module table)."""
    plans = []
    if "fp16" in variant_kinds:
        plans.append(EnginePlan(f"{ENGINE_PREFIX}fp16", "fp32", "fp16"))
    if "int8" in variant_kinds:
        plans.append(EnginePlan(f"{ENGINE_PREFIX}int8", "fp32", "int8"))
    if "pruned" in variant_kinds:
        for c in candidates:
            if c.runtime == "onnx" and c.pruning_ratio > 0 and c.precision == "fp32":
                plans.append(EnginePlan(f"{ENGINE_PREFIX}{c.name}-sparse", c.name, "fp16", True))
    return plans


def describe_profile(ranges: Mapping[str, ShapeRange]) -> str:
    """The optimisation profile in words, e.g. ``src_ids 1x1..8x128 (opt 1x20)``."""

    def dims(shape: tuple[int, ...]) -> str:
        return "x".join(str(d) for d in shape)

    return "optimisation profile " + ", ".join(
        f"{name} {dims(r.min)}..{dims(r.max)} (opt {dims(r.opt)})" for name, r in ranges.items()
    )


def build_engines(
    plans: Sequence[EnginePlan],
    candidates: Sequence[Candidate],
    family: ZooFamily,
    ranges: Mapping[str, ShapeRange],
    calibration_items: int,
    workdir: Path,
    progress: Progress,
    skipped: list[str],
) -> Iterator[Candidate]:
    """Build each planned engine; one that TensorRT cannot build is skipped with why."""
    sources = {c.name: c for c in candidates}
    for plan in plans:
        source = sources[plan.source]
        progress(f"{family.name}: building TensorRT engine {plan.name} from {source.name}")
        graph = source.graph
        notes = [f"TensorRT {plan.precision} engine of {source.name}", describe_profile(ranges)]
        calibration = None
        try:
            if plan.sparse:
                graph = workdir / f"{plan.name}.onnx"
                notes.append(sparsify_2_4(source.graph, graph).describe())
            if plan.precision == "int8":
                batches = family.calibration_inputs(calibration_items)
                calibration = CalibrationSet.from_batches(batches, ranges)
                notes.append(
                    f"entropy calibration on {len(calibration.batches)} calibration batches"
                )
            engine = build_engine(
                graph,
                workdir / f"{plan.name}.plan",
                EngineSpec(plan.precision, ranges, sparse_weights=plan.sparse),
                calibration,
            )
        except (RuntimeError, ValueError) as exc:
            skipped.append(f"{plan.name}: {exc}")
            continue
        yield Candidate(
            plan.name,
            {MAIN_GRAPH: engine},
            plan.precision,
            quantization="entropy-calibration" if plan.precision == "int8" else "none",
            pruning_ratio=source.pruning_ratio,
            parameters=source.parameters,
            notes=[*source.notes, *notes],
            runtime="tensorrt",
            sparsity="2:4" if plan.sparse else "none",
        )
