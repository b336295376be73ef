"""fp16 conversion and int8 quantization of ONNX graphs.

int8 is static post-training quantization in QDQ form, per channel, calibrated on the
family's calibration split. Recurrent layers are not covered by static QDQ, so ``dynamic``
quantization handles LSTM-style graphs and any large float weight left over (a GRU's, for
instance) is stored weight-only as int8 behind a ``DequantizeLinear``: the file shrinks, the
arithmetic of that op stays float.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

QuantizationMethod = Literal["static-qdq", "dynamic"]

# Integer kernels that int8 graphs run; their presence is how a test tells a graph is int8.
INT8_OP_TYPES = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QLinearConv",
        "QLinearMatMul",
        "DynamicQuantizeLSTM",
    }
)
_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\(")
_WEIGHT_ONLY_MIN_ELEMENTS = 4096
# Recurrent ops have no fp16 CPU kernels; keeping them fp32 up front saves retries.
_FP16_CPU_UNSAFE = ("GRU", "LSTM", "RNN")
_ATTENTION_OP_TYPES = frozenset({"Softmax", "LayerNormalization"})
_MATMUL_OP_TYPES = ("MatMul", "Gemm")


@dataclass(frozen=True)
class QuantizationResult:
    """What a quantization pass did."""

    method: QuantizationMethod
    weight_only_tensors: int
    """Float initializers stored as int8 behind DequantizeLinear (ops the quantizer skips)."""
    int8_op_types: tuple[str, ...]
    """Integer/QDQ op types present in the result."""
    matmuls_only: bool = False
    """Only MatMul/Gemm were quantized (attention graphs)."""


class _Reader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration batches to ONNX Runtime's calibrator."""

    def __init__(self, batches: Iterable[Mapping[str, npt.NDArray[Any]]]) -> None:
        self._batches: Iterator[Mapping[str, npt.NDArray[Any]]] = iter(batches)

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        batch = next(self._batches, None)
        return None if batch is None else dict(batch)


def op_types(path: Path) -> set[str]:
    """Op types used in a graph (main graph and subgraphs of control-flow nodes)."""
    model = onnx.load(str(path), load_external_data=False)
    found: set[str] = set()
    stack = [model.graph]
    while stack:
        graph = stack.pop()
        for node in graph.node:
            found.add(node.op_type)
            stack.extend(
                attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH
            )
    return found


_SMOKE_SCRIPT = """
import sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
         "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}
feeds = {}
for i in session.get_inputs():
    shape = [d if isinstance(d, int) and d > 0 else 2 for d in i.shape]
    feeds[i.name] = np.zeros(shape, dtype=types.get(i.type, np.float32))
session.run(None, feeds)
"""


def _session_error(path: Path) -> str | None:
    """None if ONNX Runtime (CPU) opens and runs the graph, else why not.

    Runs in a child process: some fp16 CPU kernels crash the process rather than raise.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _SMOKE_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if proc.returncode == 0:
        return None
    if proc.returncode < 0:
        return f"ONNX Runtime crashed (signal {-proc.returncode})"
    return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "unknown error"


def _crashing_op_types(path: Path, op_candidates: list[str], convert: Any) -> list[str]:
    """Find op types whose fp16 form crashes ONNX Runtime, by blocking one at a time."""
    for op in op_candidates:
        convert([op])
        if _session_error(path) is None:
            return [op]
    return []


def _casts_to_float(graph: onnx.GraphProto) -> set[str]:
    """Names of the Cast nodes of ``graph`` that cast to fp32."""
    return {
        node.name
        for node in graph.node
        if node.op_type == "Cast"
        and any(a.name == "to" and a.i == onnx.TensorProto.FLOAT for a in node.attribute)
    }


def _retarget_casts(graph: onnx.GraphProto, names: set[str], to: int) -> None:
    """Make the named Cast nodes cast to ``to``."""
    for node in graph.node:
        if node.name in names:
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = to


def to_fp16(source: Path, target: Path) -> list[str]:
    """Convert weights and arithmetic to fp16, keeping fp32 graph inputs and outputs.

    ONNX Runtime's CPU provider lacks fp16 kernels for some ops and crashes on a few others;
    those op types stay fp32 (found by trying the graph in a child process) and are returned,
    so the report can say which ops still run in fp32.
    """
    from onnxconverter_common import float16  # heavy import, only needed here

    model = onnx.load(str(source))
    present = sorted({node.op_type for node in model.graph.node} - {"Constant"})
    blocked: list[str] = [op for op in _FP16_CPU_UNSAFE if op in present]
    if blocked and "Transpose" in present:
        # fp16 Transposes around the recurrent layers crash ONNX Runtime's CPU provider;
        # finding that by trial costs many slow conversions.
        blocked.append("Transpose")

    def convert(extra: list[str]) -> None:
        block = list(float16.DEFAULT_OP_BLOCK_LIST) + blocked + extra
        original = onnx.load(str(source))
        casts_to_float = _casts_to_float(original.graph)
        converted = float16.convert_float_to_float16(
            original, keep_io_types=True, op_block_list=block
        )
        if "Cast" not in block:
            # The converter types these Casts' outputs fp16 but leaves their ``to`` at float
            # (e.g. the float attention masks exporters emit), which ONNX Runtime rejects.
            _retarget_casts(converted.graph, casts_to_float, onnx.TensorProto.FLOAT16)
        onnx.save(converted, str(target))

    for _ in range(len(present) + 1):
        convert([])
        error = _session_error(target)
        if error is None:
            store_remaining_weights_fp16(target)
            return blocked
        match = _MISSING_KERNEL.search(error)
        if match is not None and match.group(1) not in blocked:
            blocked.append(match.group(1))
            continue
        crashing = _crashing_op_types(target, [op for op in present if op not in blocked], convert)
        if not crashing:
            raise RuntimeError(f"fp16 graph does not run in ONNX Runtime: {error}")
        blocked.extend(crashing)
    raise RuntimeError("fp16 conversion kept finding ops without working fp16 kernels")


def to_int8(
    source: Path,
    target: Path,
    calibration: Iterable[Mapping[str, npt.NDArray[Any]]],
    method: QuantizationMethod = "static-qdq",
) -> QuantizationResult:
    """Quantize ``source`` to int8 at ``target`` and report what was quantized."""
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference + folding first, as ONNX Runtime recommends before quantizing.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        # Per-channel QDQ would give an embedding Gather's output its table's per-row scales,
        # which ONNX Runtime rejects; embeddings become weight-only int8 below instead.
        gathers = [n.name for n in onnx.load(str(prepared)).graph.node if n.op_type == "Gather"]
        # Attention graphs: min/max activation ranges of masked scores and normalisations
        # are useless (a -inf mask alone spans them), so only the weight-heavy matmuls are
        # quantized there; elsewhere every op the quantizer supports.
        matmuls_only = bool(op_types(source) & _ATTENTION_OP_TYPES)
        only = list(_MATMUL_OP_TYPES) if matmuls_only else None
        if method == "static-qdq":
            quantize_static(
                prepared,
                target,
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                nodes_to_exclude=gathers,
                op_types_to_quantize=only,
            )
        else:
            quantize_dynamic(
                prepared,
                target,
                per_channel=True,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=gathers,
                op_types_to_quantize=only,
            )
    weight_only = quantize_remaining_weights(target)
    error = _session_error(target)
    if error is not None:
        raise RuntimeError(f"int8 graph does not load in ONNX Runtime: {error}")
    return QuantizationResult(
        method=method,
        weight_only_tensors=weight_only,
        int8_op_types=tuple(sorted(op_types(target) & INT8_OP_TYPES)),
        matmuls_only=matmuls_only,
    )


def quantize_remaining_weights(path: Path) -> int:
    """Store large float weights that no quantized op consumes as int8 + DequantizeLinear.

    Per-output-channel symmetric scales along axis 0 (for a GRU's W and R that is the
    direction axis, a coarse but safe granularity). Returns how many tensors were rewritten.
    """
    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    rewritten = 0
    for name, init in list(initializers.items()):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        users = consumers.get(name, [])
        if not users or any(u.op_type in INT8_OP_TYPES for u in users):
            continue
        weights = numpy_helper.to_array(init)
        if weights.size < _WEIGHT_ONLY_MIN_ELEMENTS or weights.ndim < 2:
            continue
        if any(u.op_type not in {"GRU", "RNN", "LSTM", "MatMul", "Gemm", "Conv"} for u in users):
            continue
        flat = np.abs(weights.reshape(weights.shape[0], -1)).max(axis=1)
        scale = np.where(flat > 0, flat / 127.0, 1.0).astype(np.float32)
        shaped = scale.reshape((-1,) + (1,) * (weights.ndim - 1))
        q = np.clip(np.round(weights / shaped), -127, 127).astype(np.int8)
        graph.initializer.remove(init)
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale, f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
            ]
        )
        graph.node.insert(
            0,
            onnx.helper.make_node(
                "DequantizeLinear",
                [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                [name],
                name=f"{name}_dequantize",
                axis=0,
            ),
        )
        rewritten += 1
    if rewritten:
        onnx.save(model, str(path))
    return rewritten


def store_remaining_weights_fp16(path: Path) -> int:
    """Store large fp32 weights of ops kept in fp32 as fp16 + Cast, halving their bytes.

    The arithmetic of those ops stays fp32; only the stored weights lose precision, as they
    would in a full fp16 graph. Returns how many tensors were rewritten.
    """
    model = onnx.load(str(path))
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    rewritten = 0
    for init in list(graph.initializer):
        users = consumers.get(init.name, [])
        if init.data_type != onnx.TensorProto.FLOAT or not users:
            continue
        weights = numpy_helper.to_array(init)
        if weights.size < _WEIGHT_ONLY_MIN_ELEMENTS:
            continue
        name = init.name
        graph.initializer.remove(init)
        half = numpy_helper.from_array(weights.astype(np.float16), f"{name}_fp16")
        graph.initializer.append(half)
        graph.node.insert(
            0,
            onnx.helper.make_node(
                "Cast", [f"{name}_fp16"], [name], name=f"{name}_cast", to=onnx.TensorProto.FLOAT
            ),
        )
        rewritten += 1
    if rewritten:
        onnx.save(model, str(path))
    return rewritten
