"""GPU memory estimated from the graph: weights at their stored precision, peak activations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from builders.gpu_memory import estimate_gpu_memory, estimate_variant_gpu_memory

OPSET = 17


def _save(path: Path, nodes: list, inputs: list, outputs: list, inits: list) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp(path: Path, dtype: type = np.float32) -> Path:
    """x [B, 64] → MatMul 64x256 → Relu → MatMul 256x16 → y [B, 16]."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((64, 256)).astype(dtype), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((256, 16)).astype(dtype), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", elem, ["batch", 64])
    y = helper.make_tensor_value_info("y", elem, ["batch", 16])
    return _save(path, nodes, [x], [y], [w1, w2])


def test_weights_are_counted_at_their_stored_precision(tmp_path: Path) -> None:
    fp32 = estimate_gpu_memory(mlp(tmp_path / "fp32.onnx"), {"x": (8, 64)})
    fp16 = estimate_gpu_memory(mlp(tmp_path / "fp16.onnx", np.float16), {"x": (8, 64)})
    assert fp32.weights_bytes == (64 * 256 + 256 * 16) * 4
    assert fp16.weights_bytes * 2 == fp32.weights_bytes
    assert fp16.activations_bytes * 2 == fp32.activations_bytes
    assert fp32.total_bytes == fp32.weights_bytes + fp32.activations_bytes
    assert fp32.unknown_tensors == 0


def test_peak_activations_follow_the_tensors_alive_at_once(tmp_path: Path) -> None:
    batch = 8
    estimate = estimate_gpu_memory(mlp(tmp_path / "m.onnx"), {"x": (batch, 64)})
    x, h, r, y = (batch * n * 4 for n in (64, 256, 256, 16))
    # x stays alive (a graph input) while h is produced; then h and r are alive together.
    assert estimate.activations_bytes == max(x + h, x + h + r, x + r + y)
    bigger = estimate_gpu_memory(mlp(tmp_path / "m.onnx"), {"x": (2 * batch, 64)})
    assert bigger.activations_bytes == 2 * estimate.activations_bytes
    assert bigger.weights_bytes == estimate.weights_bytes


def test_an_int8_weight_behind_dequantize_counts_once_at_int8(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    q = numpy_helper.from_array(rng.integers(-127, 127, (64, 256), dtype=np.int8), "w_q")
    scale = numpy_helper.from_array(np.full(256, 0.01, np.float32), "w_scale")
    zero = numpy_helper.from_array(np.zeros(256, np.int8), "w_zero")
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])
    path = _save(tmp_path / "int8.onnx", nodes, [x], [y], [q, scale, zero])
    estimate = estimate_gpu_memory(path, {"x": (4, 64)})
    assert estimate.weights_bytes == 64 * 256 + 256 * 4 + 256
    # The dequantized fp32 weight is folded into the MatMul, not an activation.
    assert estimate.activations_bytes == 4 * 64 * 4 + 4 * 256 * 4


def test_a_multi_graph_variant_holds_every_weight_and_the_largest_peak(tmp_path: Path) -> None:
    encoder = mlp(tmp_path / "encoder.onnx")
    w = numpy_helper.from_array(np.ones((1, 512), np.float32), "w")
    decoder = _save(
        tmp_path / "decoder.onnx",
        [helper.make_node("Mul", ["z", "w"], ["out"])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 512])],
        [w],
    )
    shapes = {"x": (8, 64), "z": (32, 512)}  # each graph takes its own inputs' shapes
    parts = [estimate_gpu_memory(g, shapes) for g in (encoder, decoder)]
    variant = estimate_variant_gpu_memory([encoder, decoder], shapes)
    assert variant.weights_bytes == sum(p.weights_bytes for p in parts)
    # The graphs run one after another: the peak is the larger graph's, not their sum.
    assert parts[1].activations_bytes == 2 * 32 * 512 * 4 > parts[0].activations_bytes
    assert variant.activations_bytes == parts[1].activations_bytes
    with pytest.raises(ValueError, match="at least one graph"):
        estimate_variant_gpu_memory([], shapes)


def test_input_shapes_must_match_the_graph(tmp_path: Path) -> None:
    path = mlp(tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="no input shape given for graph input 'x'"):
        estimate_gpu_memory(path, {})
    with pytest.raises(ValueError, match="rank 2"):
        estimate_gpu_memory(path, {"x": (8, 64, 1)})


def test_an_op_without_shape_inference_leaves_the_working_directory_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX Runtime's symbolic inference saves the whole model into the working directory when
    # it cannot finish (here: an operator of a domain it does not know).
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mystery", ["h"], ["y"], domain="example.unknown"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[w],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("example.unknown", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    estimate = estimate_gpu_memory(tmp_path / "m.onnx", {"x": (2, 4)})
    assert estimate.weights_bytes == 4 * 4 * 4
    assert list(cwd.iterdir()) == []
