"""2:4 structured sparsity of an ONNX graph's weights, for TensorRT's sparse tensor cores.

In every group of four consecutive weights along a layer's reduction axis (the input
channels a dot product runs over) the two of smallest magnitude become zero. TensorRT, built
with ``BuilderFlag.SPARSE_WEIGHTS``, then may pick sparse kernels for those layers on GPUs
that have them (it decides per layer, where they are faster). Layers qualify when:

- the weight is an initializer of a ``Conv`` (input 1), ``MatMul`` (input 1) or ``Gemm``
  (input 1), used by nothing else (a weight tied to an embedding ``Gather`` is left alone);
- its reduction axis has a multiple of four elements (a depthwise conv's has one).

Everything here is numpy on the graph file, so it runs and is tested without TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

GROUP = 4
KEEP = 2
_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)


@dataclass
class SparsityReport:
    """What :func:`sparsify_2_4` did, per weight tensor."""

    sparsified: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    """Weight name → why it was left dense."""
    weights_sparsified: int = 0
    """Elements in the sparsified tensors."""

    def describe(self) -> str:
        """One line for a variant's notes."""
        reasons = sorted(set(self.skipped.values()))
        text = f"2:4 sparsity on {len(self.sparsified)} weight tensors"
        if self.skipped:
            text += f"; {len(self.skipped)} left dense ({'; '.join(reasons)})"
        return text


def prune_2_4(weights: npt.NDArray[Any], axis: int) -> npt.NDArray[Any]:
    """Zero the two smallest-magnitude values in every group of four along ``axis``.

    Raises:
        ValueError: ``axis`` does not have a multiple of four elements.
    """
    if weights.shape[axis] % GROUP:
        raise ValueError(f"axis {axis} has {weights.shape[axis]} elements, not a multiple of 4")
    moved = np.moveaxis(weights, axis, -1)
    groups = moved.reshape(-1, GROUP)
    order = np.argsort(np.abs(groups), axis=1, kind="stable")
    pruned = groups.copy()
    np.put_along_axis(pruned, order[:, : GROUP - KEEP], 0, axis=1)
    return np.moveaxis(pruned.reshape(moved.shape), -1, axis)


def is_2_4(weights: npt.NDArray[Any], axis: int) -> bool:
    """Whether every group of four along ``axis`` holds at most two non-zeros."""
    if weights.shape[axis] % GROUP:
        return False
    groups = np.moveaxis(weights, axis, -1).reshape(-1, GROUP)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= KEEP))


def _reduction_axis(node: onnx.NodeProto, weight: npt.NDArray[Any]) -> int | str:
    """The axis a layer's dot products run over in its weight, or why it has none."""
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        # [out, in / group, *kernel]: a depthwise conv has one input channel per group.
        return 1 if weight.shape[1] > 1 else "depthwise conv"
    if node.op_type == "Gemm":
        return 1 if attributes.get("transB", 0) else 0
    if node.op_type == "MatMul":
        return 0 if weight.ndim == 2 else "batched MatMul weight"
    return f"{node.op_type} has no sparse kernels"


def sparsify_2_4(source: Path, target: Path) -> SparsityReport:
    """Write ``source`` with 2:4-sparse weights wherever a layer qualifies to ``target``."""
    model = onnx.load(str(source))
    graph = model.graph
    users: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            users.setdefault(name, []).append((node, index))
    report = SparsityReport()
    for position, init in enumerate(graph.initializer):
        uses = users.get(init.name, [])
        weight_uses = [
            (n, i) for n, i in uses if n.op_type in ("Conv", "MatMul", "Gemm") and i == 1
        ]
        if init.data_type not in _FLOATS or not weight_uses:
            continue  # not a layer weight (biases, shapes, scales)
        if len(weight_uses) != len(uses):
            report.skipped[init.name] = "shared with another op"
            continue
        weight = numpy_helper.to_array(init)
        axes = {_reduction_axis(n, weight) for n, _ in weight_uses}
        axis = axes.pop() if len(axes) == 1 else "used along different axes"
        if isinstance(axis, str):
            report.skipped[init.name] = axis
            continue
        if weight.shape[axis] % GROUP:
            report.skipped[init.name] = "input channels not a multiple of 4"
            continue
        graph.initializer[position].CopyFrom(
            numpy_helper.from_array(prune_2_4(weight, axis).astype(weight.dtype), init.name)
        )
        report.sparsified.append(init.name)
        report.weights_sparsified += int(weight.size)
    onnx.save(model, str(target))
    return report
