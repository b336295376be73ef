"""TensorRT engines end to end on a real GPU: built, run, measured, published, served.

Skipped where TensorRT or a CUDA GPU is missing (the reason is the builders' own). Uses the
small digits family, so a build takes minutes, not hours.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from builders.convert.onnx2trt import tensorrt_unavailable_reason
from builders.zoo.api import ZooFamily

REASON = tensorrt_unavailable_reason()
pytestmark = [
    pytest.mark.skipif(REASON is not None, reason=f"TensorRT engines: {REASON}"),
    pytest.mark.timeout(1800),
]

if REASON is None:
    from builders.build import build_family
    from builders.convert.calibration import CalibrationSet
    from builders.convert.onnx2trt import EngineSpec, build_engine
    from builders.convert.sparsity import sparsify_2_4
    from builders.convert.trt_runtime import EngineRunner, measure_engine_memory
    from builders.triton.model_config import parse_config
    from builders.zoo.registry import get_family
    from gateway.layout import CONFIG_FILE
    from gateway.manifest import load_manifest, manifest_path
    from gateway.tasks.onnx_runner import onnx_graph_runner
    from tests.support.quick_repository import quick_spec


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[ZooFamily, Path]:
    family = get_family("digits")
    graph = tmp_path_factory.mktemp("digits") / "fp32.onnx"
    family.export_onnx(family.load(), graph)
    return family, graph


def agreement(family: ZooFamily, graph: Path, plan: Path) -> float:
    """Share of calibration batches on which the engine's top-1 equals ONNX Runtime's."""
    onnx_run, engine = onnx_graph_runner(graph), EngineRunner(plan)
    same = total = 0
    for batch in family.calibration_inputs(64):
        want = onnx_run(batch)["logits"].argmax(-1)
        got = engine(batch)["logits"].argmax(-1)
        same += int((want == got).sum())
        total += want.size
    return same / total


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_engines_agree_with_onnx_and_report_their_memory(
    digits: tuple[ZooFamily, Path], tmp_path: Path, precision: str
) -> None:
    family, graph = digits
    ranges = family.shape_ranges(8)
    calibration = None
    if precision == "int8":
        calibration = CalibrationSet.from_batches(family.calibration_inputs(64), ranges)
    spec = EngineSpec(precision, ranges)  # type: ignore[arg-type]
    plan = build_engine(graph, tmp_path / "m.plan", spec, calibration)
    assert agreement(family, graph, plan) >= 0.95
    memory = measure_engine_memory(plan)
    assert memory.device_bytes > 0 and memory.activation_bytes >= 0
    # Batch 8 at the profile's largest shape runs too.
    outputs = EngineRunner(plan)({"images": np.zeros((8, 1, 8, 8), np.float32)})
    assert outputs["logits"].shape == (8, 10)


def test_a_sparse_engine_builds_from_a_pruned_graph(
    digits: tuple[ZooFamily, Path], tmp_path: Path
) -> None:
    family, _ = digits
    pruned = family.prune(family.load(), 0.5)
    dense = tmp_path / "pruned.onnx"
    family.export_onnx(pruned, dense)
    report = sparsify_2_4(dense, tmp_path / "sparse.onnx")
    assert report.sparsified
    spec = EngineSpec("fp16", family.shape_ranges(8), sparse_weights=True)
    plan = build_engine(tmp_path / "sparse.onnx", tmp_path / "sparse.plan", spec)
    assert agreement(family, tmp_path / "sparse.onnx", plan) >= 0.9


def test_a_build_publishes_engine_variants_with_measured_memory(tmp_path: Path) -> None:
    repository = tmp_path / "model_repo"
    spec = replace(quick_spec("digits", repository), tensorrt=True)
    result = build_family(spec, get_family("digits"))
    assert not [s for s in result.skipped if s.startswith("tensorrt")], result.skipped
    manifest = load_manifest(manifest_path(repository, "digits"))
    engines = {v.name: v for v in manifest.variants if v.runtime == "tensorrt"}
    assert set(engines) == {"trt-fp16", "trt-int8", "trt-pruned-50-sparse"}
    for variant in engines.values():
        assert variant.gpu_memory_source == "measured" and variant.gpu_memory_bytes > 0
        if variant.status == "published":
            config = parse_config((repository / variant.model_name / CONFIG_FILE).read_text())
            assert config.platform == "tensorrt_plan"
            assert variant.graph_path(repository).is_file()
    assert engines["trt-int8"].quantization == "entropy-calibration"
    assert engines["trt-pruned-50-sparse"].sparsity == "2:4"
