"""int8 storage of a tied embedding: one int8 table serves the token lookup and the logits.

A decoder whose output projection is its token embedding reads one [V, D] table twice: a
``Gather`` looks tokens up, a ``Gemm`` (transB) projects to logits. Quantizing the Gemm's
weight the usual way would add an int8 copy beside the float table the Gather still needs.
Here the table is stored once, transposed, as int8 [D, V] with one symmetric scale per token:

- logits: ``com.microsoft.DynamicQuantizeMatMul`` (activations quantized per call, int8 GEMM,
  per-token scales applied to the result);
- lookup: ``Gather`` of the int8 columns, cast to float, times each token's scale.

No float copy of the table exists, in the file or at run time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _find_tied(graph: onnx.GraphProto) -> tuple[str, onnx.NodeProto, onnx.NodeProto] | None:
    """(table name, its Gather, its Gemm) when one initializer feeds both, else None."""
    initializers = {i.name for i in graph.initializer}
    gathers = {
        n.input[0]: n for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers
    }
    for node in graph.node:
        if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in gathers:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB") == 1 and not attrs.get("transA") and attrs.get("alpha", 1.0) == 1.0:
            return node.input[1], gathers[node.input[1]], node
    return None


def quantize_tied_embedding(path: Path) -> bool:
    """Rewrite ``path``'s tied embedding as one int8 table; False if the graph has none."""
    model = onnx.load(str(path))
    graph = model.graph
    found = _find_tied(graph)
    if found is None:
        return False
    name, gather, gemm = found
    rank = _rank(model, gather.output[0])
    table = next(i for i in graph.initializer if i.name == name)
    weights = numpy_helper.to_array(table).astype(np.float32)  # [V, D]
    peak = np.abs(weights).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0).astype(np.float32)
    quantized = np.clip(np.round(weights / scale[:, None]), -127, 127).astype(np.int8)
    graph.initializer.remove(table)
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.ascontiguousarray(quantized.T), f"{name}_int8_t"),
            numpy_helper.from_array(scale, f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zero"),
        ]
    )
    bias = list(gemm.input[2:3])
    projection = helper.make_node(
        "DynamicQuantizeMatMul",
        [gemm.input[0], f"{name}_int8_t", f"{name}_scale", f"{name}_zero", *bias],
        list(gemm.output),
        name=f"{gemm.name}_int8",
        domain="com.microsoft",
    )
    ids, out = gather.input[1], gather.output[0]
    lookup = [
        helper.make_node("Gather", [f"{name}_int8_t", ids], [f"{out}_q"], axis=1),
        helper.make_node("Cast", [f"{out}_q"], [f"{out}_f"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [f"{name}_scale", ids], [f"{out}_s"], axis=0),
        helper.make_node("Unsqueeze", [f"{out}_s", f"{name}_axis0"], [f"{out}_s0"]),
        helper.make_node("Mul", [f"{out}_f", f"{out}_s0"], [f"{out}_dt"]),
    ]
    # [D, *ids.shape] → [*ids.shape, D], the layout the float Gather had.
    lookup.append(helper.make_node("Transpose", [f"{out}_dt"], [out], perm=[*range(1, rank), 0]))
    graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), f"{name}_axis0"))
    position = list(graph.node).index(gather)
    graph.node.remove(gather)
    for offset, node in enumerate(lookup):
        graph.node.insert(position + offset, node)
    graph.node.insert(list(graph.node).index(gemm), projection)
    graph.node.remove(gemm)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(model, str(path))
    return True


def _rank(model: onnx.ModelProto, name: str) -> int:
    """Rank of a tensor, from the graph's shape information (inferred when missing)."""
    for graph in (model.graph, onnx.shape_inference.infer_shapes(model).graph):
        for info in [*graph.value_info, *graph.output]:
            if info.name == name and info.type.tensor_type.HasField("shape"):
                return len(info.type.tensor_type.shape.dim)
    raise ValueError(f"cannot tell the rank of {name}")
