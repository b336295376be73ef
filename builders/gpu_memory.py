"""GPU memory of a variant where none was measured: weights at run precision + peak activations.

The estimate has two terms, both read from the graph itself, so variants of one family differ
by what really differs between them (fp16 stores half the bytes, int8 a quarter):

- **weights**: every initializer and ``Constant`` at the dtype it is stored in. Tensors
  computed from weights alone (a ``DequantizeLinear`` of an int8 weight, a ``Cast`` of an
  fp16-stored one) are not counted again, because GPU runtimes that understand the graph's
  quantization (TensorRT) run such weights at their stored precision.
- **activations**: the peak, over the graph's nodes in order, of the bytes of every tensor
  alive at once (produced and still to be consumed; the inputs and outputs throughout), with
  shapes from shape inference at the family's largest input shapes (largest batch, longest
  lengths).

A variant of several graphs (Whisper's encoder and decoder) holds every graph's weights at
once, so its weights are their sum; its graphs run one after another, each call's
intermediates freed before the next, so its activations are the largest of the per-graph
peaks (each graph's inputs and outputs included: what one graph hands the next is counted in
the graph that holds it at its peak).

What a runtime itself needs per model instance (its context, arenas, workspace) is not in
either term: the manifest reports it once per family (``runtime_memory_bytes``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import helper, shape_inference

log = logging.getLogger(__name__)

ShapeMap = Mapping[str, Sequence[int]]
"""Concrete shape of each graph input, batch dimension included."""


@dataclass(frozen=True)
class GpuMemoryEstimate:
    """Device memory a variant needs, estimated from its graph.

    Attributes:
        weights_bytes: Weights at the precision the graph stores them in.
        activations_bytes: Peak bytes of tensors alive at once at the given input shapes.
        unknown_tensors: Intermediate tensors shape inference left without a concrete
            shape; they are not counted (0 for the zoo's graphs).
    """

    weights_bytes: int
    activations_bytes: int
    unknown_tensors: int = 0

    @property
    def total_bytes(self) -> int:
        """Weights plus peak activations."""
        return self.weights_bytes + self.activations_bytes


def _itemsize(elem_type: int) -> int:
    return int(helper.tensor_dtype_to_np_dtype(elem_type).itemsize)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    return int(math.prod(tensor.dims)) * _itemsize(tensor.data_type)


def weights_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every initializer and Constant value, at their stored dtypes."""
    graph = model.graph
    total = sum(_tensor_bytes(t) for t in graph.initializer)
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.TENSOR:
                    total += _tensor_bytes(attribute.t)
    return total


def _with_input_shapes(model: onnx.ModelProto, shapes: ShapeMap) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given concrete shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    for value in fixed.graph.input:
        if value.name in initializers:
            continue
        if value.name not in shapes:
            raise ValueError(f"no input shape given for graph input {value.name!r}")
        shape = list(shapes[value.name])
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shape):
            raise ValueError(f"{value.name}: the graph has rank {len(dims)}, got shape {shape}")
        for dim, size in zip(dims, shape, strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    return fixed


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shapes of every tensor; ONNX Runtime's symbolic inference follows shape arithmetic."""
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    # When inference stays incomplete ONNX Runtime saves the model (weights and all) into the
    # working directory before raising; a scratch directory keeps that out of the caller's.
    try:
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            inferred: onnx.ModelProto = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        return inferred
    except Exception as exc:  # noqa: BLE001 - any failure falls back to ONNX's own inference
        log.debug("symbolic shape inference failed (%s); using onnx's", exc)
        return shape_inference.infer_shapes(model, data_prop=True)


def _sizes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Bytes of every typed tensor in the graph; None where the shape is not concrete."""
    sizes: dict[str, int | None] = {}
    graph = model.graph
    for value in [*graph.input, *graph.value_info, *graph.output]:
        tensor = value.type.tensor_type
        dims = tensor.shape.dim
        if not tensor.HasField("shape") or any(not d.HasField("dim_value") for d in dims):
            sizes[value.name] = None
            continue
        sizes[value.name] = math.prod(d.dim_value for d in dims) * _itemsize(tensor.elem_type)
    return sizes


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Tensors that are weights or computed from weights alone (folded at load time)."""
    constant = {t.name for t in graph.initializer}
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type == "Constant" or (inputs and all(n in constant for n in inputs)):
            constant.update(node.output)
    return constant


def peak_activations(model: onnx.ModelProto) -> tuple[int, int]:
    """Peak bytes of non-constant tensors alive at once, walking nodes in graph order.

    A ``DequantizeLinear`` of an activation counts at its int8 input's size: runtimes fuse
    it into the op that consumes it, which reads the int8 tensor.

    Returns:
        (peak bytes, number of tensors without a concrete shape, which are not counted).
    """
    graph = model.graph
    sizes = _sizes(model)
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in sizes:
            sizes[node.output[0]] = sizes[node.input[0]]
    constant = _constants(graph)
    # The request's inputs and the graph's outputs live for the whole run.
    pinned = {v.name for v in graph.output} | {v.name for v in graph.input}
    last_use: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            last_use[name] = index
    unknown: set[str] = set()

    def size(name: str) -> int:
        value = sizes.get(name)
        if value is None:
            unknown.add(name)
            return 0
        return value

    live = {v.name for v in graph.input if v.name not in constant}
    current = sum(size(n) for n in live)
    peak = current
    for index, node in enumerate(graph.node):
        produced = [n for n in node.output if n and n not in constant]
        current += sum(size(n) for n in produced)
        live.update(produced)
        peak = max(peak, current)
        for name in {*node.input, *produced}:
            if name in live and name not in pinned and last_use.get(name, -1) <= index:
                live.discard(name)
                current -= size(name)
    return peak, len(unknown)


def estimate_gpu_memory(graph: Path, input_shapes: ShapeMap) -> GpuMemoryEstimate:
    """Weights and peak activations of ``graph`` at ``input_shapes`` (see the module doc).

    Args:
        graph: An ONNX graph file.
        input_shapes: Concrete shape of each graph input (the family's largest).
    """
    model = onnx.load(str(graph))
    inferred = _infer(_with_input_shapes(model, input_shapes))
    activations, unknown = peak_activations(inferred)
    if unknown:
        log.warning("%s: %d tensors of unknown shape not counted", graph.name, unknown)
    return GpuMemoryEstimate(weights_bytes(model), activations, unknown)


def estimate_variant_gpu_memory(
    graphs: Iterable[Path], input_shapes: ShapeMap
) -> GpuMemoryEstimate:
    """A variant's estimate over all of its graphs: weights summed, the largest peak.

    Args:
        graphs: The variant's ONNX graph files (one, or each of a multi-graph variant's).
        input_shapes: Concrete shape of each input of any of the graphs (the family's
            largest); each graph takes those of its own inputs.
    """
    estimates = [estimate_gpu_memory(graph, input_shapes) for graph in graphs]
    if not estimates:
        raise ValueError("a variant has at least one graph")
    return GpuMemoryEstimate(
        weights_bytes=sum(e.weights_bytes for e in estimates),
        activations_bytes=max(e.activations_bytes for e in estimates),
        unknown_tensors=sum(e.unknown_tensors for e in estimates),
    )
