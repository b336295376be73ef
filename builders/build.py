"""Build one family's variant ladder: derive, evaluate, profile, select, publish.

fp32 is the baseline; fp16 and int8 are graph-level transforms of it; each pruning ratio is a
structurally smaller torch model, recovered by a short fine-tune, exported, and also
quantized. A variant is one graph (``model``) or, for families that declare ``graphs``
(Whisper's encoder and decoder), several; every transform applies to each of them. Where
TensorRT and a GPU exist, engines mirror the one-graph rungs (:mod:`builders.engines`).
Every variant is evaluated with the family's metric and profiled (:mod:`builders.measure`);
the ones that lose more than the quality budget are kept in the manifest as rejected and not
written to the repository; the rest are published, and the Pareto-optimal ones recommended.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from tqdm import tqdm

from builders.convert.onnx2trt import tensorrt_unavailable_reason
from builders.engines import build_engines, plan_engines
from builders.measure import Candidate, Measurement, measure
from builders.optimize.quantize import QuantizationMethod, op_types, to_fp16, to_int8
from builders.pareto import Point, frontier
from builders.profile import measure_runtime_memory
from builders.repository import new_staging_dir, publish_family, stage_variant
from builders.sources import ModelSource, check_contract, load_torch_module
from builders.spec import BuildSpec, pruned_name
from builders.triton.model_config import TritonModel
from builders.zoo.api import ShapeRange, ZooFamily
from gateway.layout import graph_model_name, sha256_file
from gateway.manifest import (
    Artifact,
    Datatype,
    FamilyManifest,
    GraphSpec,
    MetricInfo,
    TensorSpec,
    Variant,
    model_name,
    write_manifest,
)
from gateway.tasks.base import MAIN_GRAPH

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def graph_names(family: ZooFamily) -> tuple[str, ...]:
    """The graphs of each of the family's variants (``("model",)`` unless it declares more)."""
    names: tuple[str, ...] = getattr(family, "graphs", (MAIN_GRAPH,))
    return names


def is_multi_graph(family: ZooFamily) -> bool:
    """Whether the family's variants have several graphs (with ``export_graphs`` etc.)."""
    return graph_names(family) != (MAIN_GRAPH,)


@dataclass
class BuildResult:
    """What a build produced."""

    manifest: FamilyManifest
    manifest_path: Path
    skipped: list[str]
    """Variant kinds not built, each with the reason."""
    seconds: float


def graph_parameters(graph: Path) -> int:
    """Weights in a float graph: elements of float initializers with at least one axis."""
    model = onnx.load(str(graph))
    return sum(
        int(np.prod(init.dims))
        for init in model.graph.initializer
        if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and init.dims
    )


def graph_io(graph: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Graph inputs/outputs as TensorSpecs, batch axis dropped, dynamic axes as -1."""
    dtypes: dict[int, Datatype] = {
        onnx.TensorProto.FLOAT: "FP32",
        onnx.TensorProto.FLOAT16: "FP16",
        onnx.TensorProto.INT64: "INT64",
        onnx.TensorProto.INT32: "INT32",
        onnx.TensorProto.UINT8: "UINT8",
    }
    model = onnx.load(str(graph), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}

    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.dim_value > 0 else -1 for d in tensor.shape.dim][1:]
        return TensorSpec(name=value.name, datatype=dtypes[tensor.elem_type], dims=dims)

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [spec(v) for v in model.graph.output]


def zoo_contract(family: ZooFamily, workdir: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The family's tensor contract, as the zoo model's own export defines it."""
    reference = workdir / "zoo-contract.onnx"
    if not reference.exists():
        family.export_onnx(family.load(), reference)
    return graph_io(reference)


def export_like_zoo(module: nn.Module, family: ZooFamily, path: Path, workdir: Path) -> None:
    """Export a user's module with the zoo graph's I/O names and dynamic axes.

    A user module that follows the family's contract is traced on a calibration batch and
    exported with the same names.
    """
    inputs, outputs = zoo_contract(family, workdir)
    feeds = dict(next(iter(family.calibration_inputs(1))))
    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in inputs)
    dynamic = {
        t.name: {0: "batch", **{i + 1: f"{t.name}_{i + 1}" for i, d in enumerate(t.dims) if d < 0}}
        for t in [*inputs, *outputs]
    }
    torch.onnx.export(
        module.eval(),
        args,
        str(path),
        input_names=[t.name for t in inputs],
        output_names=[t.name for t in outputs],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )


def _quality(metrics: dict[str, float], family: ZooFamily) -> float:
    value = metrics[family.metric.name]
    return value if family.metric.higher_is_better else 100.0 - value


def _derive(
    spec: BuildSpec,
    family: ZooFamily,
    source: ModelSource,
    workdir: Path,
    progress: Progress,
    skipped: list[str],
) -> list[Candidate]:
    """fp32 export and every derived variant the spec asks for."""
    module = load_torch_module(source, family)
    multi = is_multi_graph(family)
    zoo_class = type(family.load())
    fp32_graphs = _export_fp32(family, source, module, workdir)
    params = sum(graph_parameters(g) for g in fp32_graphs.values())
    candidates = [Candidate("fp32", fp32_graphs, "fp32", parameters=params)]
    method: QuantizationMethod = getattr(family, "int8_method", None) or (
        "dynamic" if "LSTM" in op_types(candidates[0].graph) else "static-qdq"
    )

    def int8_of(base: Candidate, name: str) -> Candidate:
        progress(f"{family.name}: quantizing {name} ({method})")
        if multi:
            graphs = family.quantize_int8(base.graphs, workdir / name)  # type: ignore[attr-defined]
            notes = [
                *base.notes,
                "int8: dynamic, weight matmuls per channel, tied embedding one int8 table",
            ]
            return Candidate(
                name, graphs, "int8", method, base.pruning_ratio, base.parameters, notes
            )
        target = workdir / f"{name}.onnx"
        calibration = family.calibration_inputs(spec.calibration_items)
        result = to_int8(base.graph, target, calibration, method)
        notes = [*base.notes, f"int8 ops: {', '.join(result.int8_op_types)}"]
        if result.matmuls_only:
            notes.append("attention graph: only MatMul/Gemm quantized")
        if result.weight_only_tensors:
            notes.append(f"{result.weight_only_tensors} recurrent weight tensors int8 weight-only")
        return Candidate(
            name, {MAIN_GRAPH: target}, "int8", method, base.pruning_ratio, base.parameters, notes
        )

    if "fp16" in spec.variants:
        progress(f"{family.name}: converting fp16")
        fp16_dir = workdir / "fp16"
        fp16_dir.mkdir()
        fp16_graphs = {g: fp16_dir / p.name for g, p in fp32_graphs.items()}
        kept = sorted({op for g, p in fp32_graphs.items() for op in to_fp16(p, fp16_graphs[g])})
        notes = [f"kept in fp32 on CPU: {', '.join(kept)}"] if kept else []
        candidates.append(Candidate("fp16", fp16_graphs, "fp16", parameters=params, notes=notes))
    if "int8" in spec.variants:
        candidates.append(int8_of(candidates[0], "int8"))
    wants_pruned = {"pruned", "pruned-int8"} & set(spec.variants)
    if wants_pruned and module is None:
        skipped.append("pruned: structured pruning needs a torch model, the source is ONNX")
    elif wants_pruned and not isinstance(module, zoo_class):
        # Structured pruning edits a known architecture; a foreign module has none we know.
        skipped.append(
            f"pruned: structured pruning knows the zoo's {family.name} architecture, "
            f"not {type(module).__name__}"
        )
    elif wants_pruned and module is not None:
        budget_s = spec.recover_budget_s
        if budget_s is None:
            budget_s = family.recover_budget_s
        recovery = f"recovery fine-tune of {budget_s:.0f} s of a 2-core CPU"
        for ratio in spec.pruning_ratios:
            name = pruned_name(ratio)
            progress(f"{family.name}: pruning {ratio:.0%} + {recovery}")
            pruned = family.prune(copy.deepcopy(module), ratio)
            pruned = family.recover(pruned, module, budget_s)
            if multi:
                graphs = export_multi(family, pruned, workdir / name)
            else:
                graphs = {MAIN_GRAPH: workdir / f"{name}.onnx"}
                family.export_onnx(pruned, graphs[MAIN_GRAPH])
            size = sum(graph_parameters(g) for g in graphs.values())
            base = Candidate(name, graphs, "fp32", "none", ratio, size, [recovery])
            if "pruned" in spec.variants:
                candidates.append(base)
            if "pruned-int8" in spec.variants:
                candidates.append(int8_of(base, pruned_name(ratio, int8=True)))
    return candidates


def _export_fp32(
    family: ZooFamily, source: ModelSource, module: nn.Module | None, workdir: Path
) -> dict[str, Path]:
    """The fp32 graphs: exported from the module, or the user's ONNX file as it is."""
    fp32 = workdir / "fp32.onnx"
    zoo_class = type(family.load())
    if is_multi_graph(family):
        if module is None or not isinstance(module, zoo_class):
            raise ValueError(f"{family.name} variants are built from its own model class")
        return export_multi(family, module, workdir / "fp32")
    if module is None:
        assert source.path is not None
        fp32.write_bytes(source.path.read_bytes())
    elif isinstance(module, zoo_class):
        family.export_onnx(module, fp32)
    else:
        export_like_zoo(module, family, fp32, workdir)
    return {MAIN_GRAPH: fp32}


def export_multi(family: ZooFamily, module: nn.Module, directory: Path) -> dict[str, Path]:
    """Export every graph of a multi-graph family's module into ``directory``."""
    graphs: dict[str, Path] = family.export_graphs(module, directory)  # type: ignore[attr-defined]
    return graphs


def input_ranges(family: ZooFamily, fp32: Candidate, max_batch_size: int) -> dict[str, ShapeRange]:
    """Per graph input, the shapes requests give it (GPU memory, TensorRT profiles).

    A multi-graph family reads the sizes its model fixes (layers, heads, widths) from the
    fp32 graphs themselves, since its source may be a model of another size than the zoo's.
    """
    if is_multi_graph(family):
        ranges: dict[str, ShapeRange] = family.graph_shape_ranges(  # type: ignore[attr-defined]
            fp32.graphs, max_batch_size
        )
        return ranges
    return family.shape_ranges(max_batch_size)


def _engines(
    spec: BuildSpec,
    family: ZooFamily,
    candidates: list[Candidate],
    ranges: Mapping[str, ShapeRange],
    workdir: Path,
    progress: Progress,
    skipped: list[str],
) -> list[Candidate]:
    """TensorRT engines mirroring the ONNX candidates, or one line saying why there are none."""
    if not spec.tensorrt:
        return []
    reason = tensorrt_unavailable_reason()
    if reason is None and is_multi_graph(family):
        reason = (
            f"{family.name} variants have several graphs ({', '.join(graph_names(family))}); "
            "engines are built for one-graph variants only"
        )
    if reason is not None:
        skipped.append(f"tensorrt engines: {reason}")
        return []
    plans = plan_engines(candidates, spec.variants)
    return list(
        build_engines(
            plans, candidates, family, ranges, spec.calibration_items, workdir, progress, skipped
        )
    )


DEFAULT_QUALITY_DROP = 2.0
"""Points of quality a variant may lose against fp32 unless the spec or family says."""


def quality_budget(spec: BuildSpec, family: ZooFamily) -> float:
    """Points a variant may lose: the spec's, else the family's own, else 2."""
    if spec.max_quality_drop is not None:
        return spec.max_quality_drop
    own: float = getattr(family, "max_quality_drop", DEFAULT_QUALITY_DROP)
    return own


def _stage(
    c: Candidate,
    name: str,
    spec: BuildSpec,
    family: ZooFamily,
    io: tuple[list[TensorSpec], list[TensorSpec]],
    graphs: list[GraphSpec],
    staging: Path,
) -> list[Path]:
    """Lay out a variant's Triton model directories (one per graph); returns them."""
    if not graphs:
        model = TritonModel(name, c.runtime, tuple(io[0]), tuple(io[1]), spec.max_batch_size)
        return [stage_variant(staging, model, c.graph, family.assets_dir)]
    dirs = []
    for g in graphs:
        model = TritonModel(
            graph_model_name(name, g.name),
            c.runtime,
            tuple(g.inputs),
            tuple(g.outputs),
            spec.max_batch_size,
        )
        dirs.append(stage_variant(staging, model, c.graphs[g.name], family.assets_dir))
    return dirs


def _variant_entry(
    c: Candidate,
    m: Measurement,
    baseline: float,
    spec: BuildSpec,
    family: ZooFamily,
    io: tuple[list[TensorSpec], list[TensorSpec]],
    graphs: list[GraphSpec],
    staging: Path,
) -> Variant:
    """The manifest entry of a measured candidate; published ones are staged on disk."""
    quality = _quality(m.metrics, family)
    drop = baseline - quality
    budget = quality_budget(spec, family)
    rejected = drop > budget
    name = model_name(family.name, c.name)
    artifacts: list[Artifact] = []
    if not rejected:
        artifacts = [
            Artifact(
                path=str(f.relative_to(staging)), sha256=sha256_file(f), size_bytes=f.stat().st_size
            )
            for model_dir in _stage(c, name, spec, family, io, graphs, staging)
            for f in sorted(model_dir.rglob("*"))
            if f.is_file()
        ]
    reason = f"loses {drop:.2f} points of {family.metric.name}, budget {budget:.2f}"
    return Variant(
        name=c.name,
        model_name=name,
        status="rejected" if rejected else "published",
        rejection_reason=reason if rejected else None,
        recommended=False,
        runtime=c.runtime,
        precision=c.precision,
        quantization=c.quantization,
        sparsity=c.sparsity,
        pruning_ratio=c.pruning_ratio,
        artifacts=artifacts,
        size_bytes=c.size_bytes,
        parameters=c.parameters,
        metrics={k: round(v, 4) for k, v in m.metrics.items()},
        quality=round(quality, 4),
        quality_drop=round(drop, 4),
        latency=m.latency,
        size_latency=m.sizes.points,
        resident_memory_bytes=m.resident_bytes,
        gpu_memory_bytes=m.gpu.total_bytes,
        gpu_memory_source=m.gpu.source,
        gpu_weights_bytes=m.gpu.weights_bytes,
        gpu_activations_bytes=m.gpu.activations_bytes,
        notes=c.notes,
    )


def build_family(
    spec: BuildSpec,
    family: ZooFamily,
    source: ModelSource | None = None,
    progress: Progress | None = None,
    show_progress: bool = False,
) -> BuildResult:
    """Build, measure and publish ``family``'s variants into ``spec.repository``."""
    say = progress or (lambda message: log.info(message))
    source = source or ModelSource()
    started = time.perf_counter()
    spec.repository.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"build-{family.name}-") as tmp:
        workdir = Path(tmp)
        candidates = _derive(spec, family, source, workdir, say, skipped)
        graphs: list[GraphSpec] = (
            family.graph_specs() if is_multi_graph(family) else []  # type: ignore[attr-defined]
        )
        inputs, outputs = ([], []) if graphs else graph_io(candidates[0].graph)
        if source.kind != "zoo" and not graphs:
            want_in, want_out = zoo_contract(family, workdir)
            check_contract(
                candidates[0].graph, [t.name for t in want_in], [t.name for t in want_out]
            )
        ranges = input_ranges(family, candidates[0], spec.max_batch_size)
        candidates += _engines(spec, family, candidates, ranges, workdir, say, skipped)
        items = family.sample_items(32)
        measured = {
            c.name: measure(c, spec, family, items, ranges, workdir, say)
            for c in tqdm(
                candidates,
                desc=f"{family.name}: measuring",
                unit="variant",
                disable=not show_progress,
            )
        }
        baseline = _quality(measured["fp32"].metrics, family)
        staging = new_staging_dir(spec.repository, family.name)
        variants = [
            _variant_entry(
                c, measured[c.name], baseline, spec, family, (inputs, outputs), graphs, staging
            )
            for c in candidates
        ]
        best = frontier(
            [
                Point(v.name, v.size_bytes, v.latency[0].p95_s, v.quality)
                for v in variants
                if v.status == "published"
            ]
        )
        variants = [v.model_copy(update={"recommended": v.name in best}) for v in variants]
        manifest = FamilyManifest(
            family=family.name,
            task=family.task,
            metric=MetricInfo(
                name=family.metric.name, higher_is_better=family.metric.higher_is_better
            ),
            max_batch_size=spec.max_batch_size,
            size_unit=measured["fp32"].sizes.unit,
            profiled_item_size=measured["fp32"].sizes.profiled_item_size,
            inputs=inputs,
            outputs=outputs,
            graphs=graphs,
            assets=sorted(p.name for p in family.assets_dir.iterdir() if p.is_file()),
            built_at=datetime.now(UTC).isoformat(timespec="seconds"),
            source=f"{source.describe()} sha256:{sha256_file(candidates[0].graph)[:16]}",
            runtime_memory_bytes=measure_runtime_memory(workdir),
            variants=variants,
        )
        publish_family(spec.repository, family.name, staging)
        path = write_manifest(spec.repository, manifest)
    for reason in skipped:
        say(f"{family.name}: skipped {reason}")
    return BuildResult(manifest, path, skipped, time.perf_counter() - started)
