"""The builders on the real zoo models: invariants of every published variant."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from builders.convert.onnx2trt import tensorrt_unavailable_reason
from builders.optimize.quantize import INT8_OP_TYPES, op_types
from builders.triton.flavour import write_python_flavour
from builders.triton.model_config import parse_config
from builders.triton.server import TritonServer
from builders.zoo.registry import get_family
from gateway.layout import graph_model_name
from gateway.manifest import FamilyManifest, find_manifests, load_manifest
from gateway.tasks.onnx_runner import GraphSessions, onnx_graph_runner
from tests.support.quick_repository import EVAL_LIMIT, FAMILIES, VARIANTS

BENCH = Path(__file__).resolve().parents[2] / "bench"

pytestmark = pytest.mark.slow


def test_every_family_has_a_valid_manifest_and_report(quick_repository: Path) -> None:
    names = {load_manifest(p).family for p in find_manifests(quick_repository)}
    assert names == set(FAMILIES)
    for family in FAMILIES:
        manifest = load_manifest(quick_repository / f"{family}.manifest.json")
        kinds = {v.name for v in manifest.variants}
        wanted = VARIANTS.get(family, ("fp32", "fp16", "int8", "pruned-50", "pruned-50-int8"))
        assert set(wanted) <= kinds
        assert manifest.variant("fp32").status == "published"
        assert any(v.recommended for v in manifest.published())
        for v in manifest.variants:
            for point in v.latency:
                # Per request the graph's share is part of the whole, so its median is too.
                assert point.graph_p50_s is not None and 0 < point.graph_p50_s <= point.p50_s
        _check_size_profile(manifest)
        report = (quick_repository / f"{family}.report.md").read_text()
        for v in manifest.variants:
            assert f"| {v.name} |" in report
        kept = [v for v in manifest.published() if v.pruning_ratio > 0 and v.precision == "fp32"]
        if kept:
            best = max(kept, key=lambda v: v.pruning_ratio)
            assert f"Largest pruning ratio within the quality budget: `{best.name}`" in report
        elif any(v.pruning_ratio > 0 for v in manifest.variants):
            assert "No pruning ratio stayed within the quality budget." in report
        png = (quick_repository / f"{family}.pareto.png").read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


SIZE_UNITS = {"translation": "source_tokens", "speech": "audio_seconds"}


def _check_size_profile(manifest: FamilyManifest) -> None:
    """Families whose items differ in cost are timed against size; the others are not."""
    unit = SIZE_UNITS.get(manifest.family)
    assert manifest.size_unit == unit
    for v in manifest.variants:
        if unit is None:
            assert not v.size_latency and manifest.profiled_item_size is None
            continue
        sizes = [p.size for p in v.size_latency]
        assert len(sizes) >= 2 and sizes == sorted(sizes) and sizes[0] < sizes[-1]
        assert sizes[0] <= (manifest.profiled_item_size or 0) <= sizes[-1]
        # The largest items take longer than the smallest, whatever the noise between.
        assert v.size_latency[-1].p50_s > v.size_latency[0].p50_s


@pytest.mark.parametrize("family_name", FAMILIES)
def test_recorded_metrics_are_reproduced_from_artifacts(
    quick_repository: Path, family_name: str
) -> None:
    family = get_family(family_name)
    manifest = load_manifest(quick_repository / f"{family_name}.manifest.json")
    for variant in manifest.published():
        graphs = {g: variant.graph_path(quick_repository, g) for g in manifest.graph_names()}
        for name, graph in graphs.items():
            config = parse_config((graph.parent.parent / "config.pbtxt").read_text())
            assert config.name == graph_model_name(variant.model_name, name)
            assert config.backend == "onnxruntime"
        metrics = family.evaluate(GraphSessions(graphs), EVAL_LIMIT[family_name])
        for key, recorded in variant.metrics.items():
            assert metrics[key] == pytest.approx(recorded, abs=0.05), (variant.name, key)


@pytest.mark.parametrize("family_name", FAMILIES)
def test_pruned_are_smaller_and_int8_is_quantized(quick_repository: Path, family_name: str) -> None:
    manifest = load_manifest(quick_repository / f"{family_name}.manifest.json")
    fp32, int8 = manifest.variant("fp32"), manifest.variant("int8")
    assert fp32.size_bytes / int8.size_bytes > 3.0
    quantized = [int8]
    if family_name not in VARIANTS:  # a family whose quick ladder has its pruned variants
        pruned, pruned_int8 = manifest.variant("pruned-50"), manifest.variant("pruned-50-int8")
        assert pruned.parameters < fp32.parameters
        assert pruned.size_bytes < fp32.size_bytes
        assert pruned_int8.size_bytes < int8.size_bytes
        quantized.append(pruned_int8)
    for v in quantized:
        assert v.precision == "int8"
        if v.status == "published":
            for graph in manifest.graph_names():
                assert op_types(v.graph_path(quick_repository, graph)) & INT8_OP_TYPES


def test_python_flavour_loads_in_real_triton(quick_repository: Path, tmp_path: Path) -> None:
    names = write_python_flavour(quick_repository, tmp_path / "python-repo")
    assert names
    with TritonServer(tmp_path / "python-repo", explicit=True, load_models=tuple(names)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for name in names:
            assert client.is_model_ready(name), name
        # One variant per family answers exactly like ONNX Runtime in-process.
        for family_name in FAMILIES:
            family = get_family(family_name)
            feeds = dict(next(iter(family.calibration_inputs(1))))
            manifest = load_manifest(quick_repository / f"{family_name}.manifest.json")
            variant = manifest.variant("int8")
            if variant.status != "published":
                variant = manifest.variant("fp32")
            # The calibration inputs feed the first graph (a multi-graph family's encoder).
            graph = manifest.graph_names()[0]
            expected = onnx_graph_runner(variant.graph_path(quick_repository, graph))(feeds)
            inputs = []
            for key, value in feeds.items():
                tensor = grpcclient.InferInput(key, list(value.shape), _dtype(value))
                tensor.set_data_from_numpy(value)
                inputs.append(tensor)
            result = client.infer(graph_model_name(variant.model_name, graph), inputs)
            for key, value in expected.items():
                np.testing.assert_allclose(result.as_numpy(key), value, rtol=1e-5, atol=1e-5)
        client.close()


def test_pruned_speedup_bench_times_every_pruned_variant(quick_repository: Path) -> None:
    spec = importlib.util.spec_from_file_location("pruned_speedup", BENCH / "pruned_speedup.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    manifest = load_manifest(quick_repository / "digits.manifest.json")
    items = get_family("digits").sample_items(4)
    rows = bench.measure_family(quick_repository, manifest, items, rounds=6, warmup=1)
    assert [r["variant"] for r in rows] == ["fp32", "pruned-50"]
    assert all(r["runs"] == 6 and 0 < r["graph_p50_ms"] <= r["p50_ms"] for r in rows)
    assert rows[0]["faster_p50"] == 1.0 and rows[0]["faster_graph_p50"] == 1.0
    assert "| digits | pruned-50 |" in bench.markdown(
        rows, {"rounds": 6, "warmup": 1, "items": 4, "machine": "x"}
    )


def _dtype(value: np.ndarray) -> str:
    return {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[value.dtype]


@pytest.mark.parametrize("family_name", FAMILIES)
def test_gpu_memory_follows_the_precision_the_weights_run_in(
    quick_repository: Path, family_name: str
) -> None:
    manifest = load_manifest(quick_repository / f"{family_name}.manifest.json")
    fp32, int8 = manifest.variant("fp32"), manifest.variant("int8")
    for v in (v for v in manifest.variants if v.runtime == "onnx"):
        assert v.gpu_memory_source == "estimated"
        assert v.gpu_weights_bytes is not None and v.gpu_activations_bytes is not None
        assert v.gpu_memory_bytes == v.gpu_weights_bytes + v.gpu_activations_bytes
        assert v.gpu_activations_bytes > 0
    assert fp32.gpu_weights_bytes and int8.gpu_weights_bytes
    # fp16 stores every weight in half the bytes; int8 the quantized ones in a quarter.
    if family_name not in VARIANTS:  # a family whose quick ladder has fp16
        fp16 = manifest.variant("fp16")
        assert fp16.gpu_weights_bytes and fp16.gpu_weights_bytes <= 0.6 * fp32.gpu_weights_bytes
        if family_name == "translation":
            assert fp16.gpu_memory_bytes < fp32.gpu_memory_bytes
    if family_name in ("translation", "speech"):
        assert int8.gpu_weights_bytes <= 0.35 * fp32.gpu_weights_bytes
    assert 0 < manifest.runtime_memory_bytes


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT is usable here")
def test_without_tensorrt_each_build_says_once_why_there_are_no_engines(
    quick_repository: Path,
) -> None:
    reason = tensorrt_unavailable_reason()
    for family in FAMILIES:
        manifest = load_manifest(quick_repository / f"{family}.manifest.json")
        assert {v.runtime for v in manifest.variants} == {"onnx"}
        report = (quick_repository / f"{family}.report.md").read_text()
        lines = [line for line in report.splitlines() if "tensorrt" in line.lower()]
        assert lines == [f"- tensorrt engines: {reason}"]
