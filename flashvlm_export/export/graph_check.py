"""Static-graph rules: no control flow, no data-dependent shapes, TopK within TensorRT's limit."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from flashvlm_export.selector.static import TOPK_LIMIT

FORBIDDEN_OPS = ("Loop", "If", "NonZero", "Scan", "Unique")


def _constant_values(graph: onnx.GraphProto) -> dict[str, object]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def static_graph_problems(model: onnx.ModelProto) -> list[str]:
    """Every violation, collected (empty when the graph is static and TensorRT-friendly)."""
    graph = model.graph
    problems = []
    for node in graph.node:
        if node.op_type in FORBIDDEN_OPS:
            problems.append(f"node {node.name or node.output[0]} is a {node.op_type}")
    constants = _constant_values(graph)
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        k = constants.get(node.input[1])
        if k is None:
            problems.append(f"TopK {node.name or node.output[0]} has a data-dependent K")
        elif int(k.reshape(-1)[0]) > TOPK_LIMIT:
            problems.append(f"TopK {node.name or node.output[0]} has K={int(k.reshape(-1)[0])} > {TOPK_LIMIT}")
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{value.name} has a dynamic dimension")
    return problems


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
