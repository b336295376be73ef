"""int8 Whisper graphs: dynamic quantization of the weight matmuls, the tied table in int8.

Dynamic quantization (int8 weights per output channel, activations quantized per call from
their actual range) rather than static QDQ: attention activations (softmax scores, masked
logits, layer-norm outputs) have ranges a calibration set cannot pin down, and on CPU the
weight-heavy matmuls are where int8 pays. Only matmuls with a constant weight are quantized;
the attention products of two activations stay float. The tied embedding becomes one int8
table (:mod:`builders.optimize.tied`); the convolutions' weights are stored int8 too
(weight-only). fp16 keeps the graphs' inputs and outputs fp32, so the task code is the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
from onnxruntime.quantization import QuantType, quantize_dynamic

from builders.optimize.quantize import (
    INT8_OP_TYPES,
    QuantizationResult,
    op_types,
    quantize_remaining_weights,
)
from builders.optimize.tied import quantize_tied_embedding


def quantize_graph(source: Path, target: Path) -> QuantizationResult:
    """One Whisper graph (encoder or decoder) to int8 as the module docstring says."""
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "staged.onnx"
        onnx.save(onnx.load(str(source)), str(staged))
        # First: the quantizer would transpose a Gemm's weight in place, under the Gather too.
        quantize_tied_embedding(staged)
        quantize_dynamic(
            staged,
            target,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
    weight_only = quantize_remaining_weights(target)
    return QuantizationResult(
        method="dynamic",
        weight_only_tensors=weight_only,
        int8_op_types=tuple(sorted(op_types(target) & INT8_OP_TYPES | {"DynamicQuantizeMatMul"}))
        if "DynamicQuantizeMatMul" in op_types(target)
        else tuple(sorted(op_types(target) & INT8_OP_TYPES)),
        matmuls_only=True,
    )
