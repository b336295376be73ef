"""The TensorRT path up to the TensorRT calls: plans, profiles, calibration, sparsity, configs.

TensorRT is not installed here; what runs only with it and a GPU is in tests/gpu/.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders.convert.calibration import CalibrationSet, pad_to
from builders.convert.onnx2trt import EngineSpec, build_engine, tensorrt_unavailable_reason
from builders.convert.sparsity import is_2_4, prune_2_4, sparsify_2_4
from builders.engines import EnginePlan, describe_profile, plan_engines
from builders.measure import Candidate
from builders.spec import BuildSpec
from builders.triton.model_config import TritonModel, model_config
from builders.zoo.api import ShapeRange
from gateway.manifest import TensorSpec
from gateway.tasks.base import MAIN_GRAPH

NO_TENSORRT = importlib.util.find_spec("tensorrt") is None
TOKENS = ShapeRange((1, 1), (1, 20), (8, 128))


def candidate(name: str, ratio: float = 0.0, precision: str = "fp32") -> Candidate:
    return Candidate(name, {MAIN_GRAPH: Path(f"{name}.onnx")}, precision, pruning_ratio=ratio)


def test_engines_mirror_the_onnx_rungs_asked_for() -> None:
    candidates = [
        candidate("fp32"),
        candidate("fp16", precision="fp16"),
        candidate("int8", precision="int8"),
        candidate("pruned-25", 0.25),
        candidate("pruned-25-int8", 0.25, "int8"),
        candidate("pruned-50", 0.5),
    ]
    plans = plan_engines(candidates, BuildSpec(family="x", repository=Path("r")).variants)
    assert plans == [
        EnginePlan("trt-fp16", "fp32", "fp16"),
        EnginePlan("trt-int8", "fp32", "int8"),
        EnginePlan("trt-pruned-25-sparse", "pruned-25", "fp16", sparse=True),
        EnginePlan("trt-pruned-50-sparse", "pruned-50", "fp16", sparse=True),
    ]
    assert [p.name for p in plan_engines(candidates, ("fp32", "int8"))] == ["trt-int8"]
    assert plan_engines(candidates, ("fp32",)) == []


def test_shape_ranges_and_engine_specs_are_checked_early() -> None:
    with pytest.raises(ValueError, match="one rank"):
        ShapeRange((1, 1), (1,), (8, 128))
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeRange((1, 1), (16, 20), (8, 128))
    with pytest.raises(ValueError, match="fp16 or int8"):
        EngineSpec("fp8", {"src_ids": TOKENS})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape range of every input"):
        EngineSpec("fp16", {})
    spec = EngineSpec("fp16", {"src_ids": TOKENS, "tgt_ids": TOKENS})
    spec.check_inputs(["src_ids", "tgt_ids"])
    with pytest.raises(ValueError, match=r"without a range \['features'\].*for no input"):
        spec.check_inputs(["src_ids", "features"])
    assert describe_profile({"src_ids": TOKENS}) == (
        "optimisation profile src_ids 1x1..8x128 (opt 1x20)"
    )


def test_calibration_batches_are_padded_to_one_shape_within_the_profile() -> None:
    batches = [
        {"src_ids": np.ones((8, 5), np.int64), "tgt_ids": np.ones((8, 3), np.int64)},
        {"src_ids": np.ones((8, 9), np.int64), "tgt_ids": np.ones((8, 2), np.int64)},
        {"src_ids": np.ones((3, 4), np.int64), "tgt_ids": np.ones((3, 4), np.int64)},
    ]
    ranges = {"src_ids": TOKENS, "tgt_ids": TOKENS}
    calibration = CalibrationSet.from_batches(batches, ranges)
    assert calibration.shapes == {"src_ids": (8, 9), "tgt_ids": (8, 3)}
    assert calibration.dropped == 1  # three rows, not eight: another profile shape
    first = calibration.batches[0]["src_ids"]
    assert first.shape == (8, 9) and first[:, :5].all() and not first[:, 5:].any()
    assert calibration.profile()["src_ids"] == ShapeRange((8, 9), (8, 9), (8, 9))
    with pytest.raises(ValueError, match=r"outside \(1, 1\)..\(8, 4\)"):
        CalibrationSet.from_batches(batches[:2], {"src_ids": ShapeRange((1, 1), (1, 1), (8, 4))})
    with pytest.raises(ValueError, match="lacks inputs"):
        CalibrationSet.from_batches(batches, {"features": TOKENS})
    with pytest.raises(ValueError, match="no calibration batches"):
        CalibrationSet.from_batches([], ranges)
    with pytest.raises(ValueError, match="cannot pad"):
        pad_to(np.ones((2, 5)), (2, 4))


def test_2_4_pruning_keeps_the_two_largest_of_every_four() -> None:
    weights = np.array([[0.1, -3.0, 0.2, 2.0, 5.0, 0.0, -0.25, 0.5]], np.float32)
    pruned = prune_2_4(weights, axis=1)
    assert pruned.tolist() == [[0.0, -3.0, 0.0, 2.0, 5.0, 0.0, 0.0, 0.5]]
    assert is_2_4(pruned, 1) and not is_2_4(weights, 1)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        prune_2_4(np.ones((2, 6), np.float32), axis=1)


def sparsity_graph(path: Path) -> Path:
    """Conv (8 in-channels), depthwise Conv, MatMul K=8, MatMul K=6, a tied Gather+MatMul."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [
        weight("conv_w", 8, 8, 3, 3),
        weight("dw_w", 8, 1, 3, 3),
        weight("fc_w", 8, 6),
        weight("odd_w", 6, 8),
        weight("tied_w", 8, 8),
        numpy_helper.from_array(np.array([0, 1], np.int64), "ids"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "dw_w"], ["c2"], pads=[1, 1, 1, 1], group=8),
        helper.make_node("ReduceMean", ["c2"], ["pooled"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["pooled", "fc_w"], ["h"]),
        helper.make_node("MatMul", ["h", "odd_w"], ["h2"]),
        helper.make_node("MatMul", ["h2", "tied_w"], ["y"]),
        helper.make_node("Gather", ["tied_w", "ids"], ["emb"], axis=0),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])
    emb = helper.make_tensor_value_info("emb", TensorProto.FLOAT, [2, 8])
    graph = helper.make_graph(nodes, "sparse", [x], [y, emb], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_sparsity_covers_the_layers_that_allow_it(tmp_path: Path) -> None:
    source = sparsity_graph(tmp_path / "dense.onnx")
    report = sparsify_2_4(source, tmp_path / "sparse.onnx")
    assert report.sparsified == ["conv_w", "fc_w"]
    assert report.skipped == {
        "dw_w": "depthwise conv",
        "odd_w": "input channels not a multiple of 4",
        "tied_w": "shared with another op",
    }
    assert report.weights_sparsified == 8 * 8 * 3 * 3 + 8 * 6
    weights = {
        i.name: numpy_helper.to_array(i)
        for i in onnx.load(tmp_path / "sparse.onnx").graph.initializer
    }
    assert is_2_4(weights["conv_w"], 1) and is_2_4(weights["fc_w"], 0)
    dense = {i.name: numpy_helper.to_array(i) for i in onnx.load(source).graph.initializer}
    assert np.array_equal(weights["dw_w"], dense["dw_w"])
    assert np.array_equal(weights["tied_w"], dense["tied_w"])
    assert "2:4 sparsity on 2 weight tensors; 3 left dense" in report.describe()
    # The sparse graph still runs, with the same tensors.
    session = ort.InferenceSession(
        str(tmp_path / "sparse.onnx"), providers=["CPUExecutionProvider"]
    )
    (y, emb) = session.run(None, {"x": np.ones((2, 8, 6, 6), np.float32)})
    assert y.shape == (2, 8) and emb.shape == (2, 8)


def test_engine_configs_use_the_tensorrt_platform_on_the_gpu() -> None:
    images = TensorSpec(name="images", datatype="FP32", dims=[1, 8, 8])
    logits = TensorSpec(name="logits", datatype="FP32", dims=[10])
    model = TritonModel("digits__trt-int8", "tensorrt", (images,), (logits,), 8)
    config = model_config(model)
    assert config.platform == "tensorrt_plan" and not config.backend
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert model.graph_file == "model.plan"
    with pytest.raises(ValueError, match="python flavour runs ONNX graphs only"):
        model_config(model, "python")


@pytest.mark.skipif(not NO_TENSORRT, reason="TensorRT is installed here")
def test_without_tensorrt_the_reason_is_said_and_no_engine_is_built(tmp_path: Path) -> None:
    reason = tensorrt_unavailable_reason()
    assert reason is not None and "TensorRT is not installed" in reason
    spec = EngineSpec("fp16", {"images": ShapeRange((1, 1, 8, 8), (1, 1, 8, 8), (8, 1, 8, 8))})
    with pytest.raises(RuntimeError, match="cannot build a TensorRT engine: TensorRT is not"):
        build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", spec)
    assert not (tmp_path / "m.plan").exists()
