from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from builders.optimize.quantize import INT8_OP_TYPES, op_types, to_fp16, to_int8


class ConvGru(nn.Module):
    """Conv front end + GRU, the shape of the speech model, small enough for a unit test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(40, 96, 5, stride=2, padding=2)
        self.gru = nn.GRU(96, 96, batch_first=True, bidirectional=True)
        self.out = nn.Linear(192, 30)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.conv(features.transpose(1, 2)).relu().transpose(1, 2)
        y, _ = self.gru(x)
        return self.out(y).log_softmax(-1)


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("q") / "fp32.onnx"
    torch.onnx.export(
        ConvGru().eval(),
        (torch.randn(1, 64, 40),),
        str(path),
        input_names=["features"],
        output_names=["log_probs"],
        dynamic_axes={"features": {0: "b", 1: "t"}, "log_probs": {0: "b", 1: "t2"}},
        opset_version=17,
        dynamo=False,
    )
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"features": x})[0]


def test_static_int8_is_smaller_quantized_and_close(fp32_graph: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    calibration = [
        {"features": rng.standard_normal((2, 64, 40)).astype(np.float32)} for _ in range(8)
    ]
    target = tmp_path / "int8.onnx"
    result = to_int8(fp32_graph, target, calibration)
    assert result.method == "static-qdq"
    assert "QuantizeLinear" in result.int8_op_types and "DequantizeLinear" in result.int8_op_types
    assert result.weight_only_tensors == 2  # the GRU's W and R, which static QDQ skips
    assert op_types(target) & INT8_OP_TYPES
    assert fp32_graph.stat().st_size / target.stat().st_size > 3.0
    x = rng.standard_normal((3, 80, 40)).astype(np.float32)
    ref, got = _run(fp32_graph, x), _run(target, x)
    assert ref.shape == got.shape
    assert (ref.argmax(-1) == got.argmax(-1)).mean() > 0.9


def test_fp16_keeps_io_types_and_halves_weights(fp32_graph: Path, tmp_path: Path) -> None:
    target = tmp_path / "fp16.onnx"
    kept = to_fp16(fp32_graph, target)
    assert "GRU" in kept  # no fp16 GRU kernel on the CPU
    assert fp32_graph.stat().st_size / target.stat().st_size > 1.8
    x = np.random.default_rng(1).standard_normal((2, 50, 40)).astype(np.float32)
    got = _run(target, x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, _run(fp32_graph, x), atol=2e-2)
