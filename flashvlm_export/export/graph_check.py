"""Static-graph rules: no control flow, no data-dependent shapes, TopK within TensorRT's limit."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from flashvlm_export.selector.static import TOPK_LIMIT

FORBIDDEN_OPS = ("Loop", "If", "NonZero", "Scan", "Unique")


def _constant_values(graph: onnx.GraphProto) -> dict[str, object]:
    """The values of the graph's own constants; weights kept as external data (a graph over 2 GB) are not read:
    the rules need small constants (TopK's K, shapes), which ONNX never moves out of the file."""
    values = {
        init.name: numpy_helper.to_array(init) for init in graph.initializer if init.data_location != onnx.TensorProto.EXTERNAL
    }
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def static_graph_problems(model: onnx.ModelProto) -> list[str]:
    """Every violation, collected (empty when the graph is static and TensorRT-friendly)."""
    graph = model.graph
    problems = []
    for node in graph.node:
        if node.op_type in FORBIDDEN_OPS:
            problems.append(f"node {_label(node)} is a {node.op_type}")
    constants = _constant_values(graph)
    for node in graph.node:
        if node.op_type != "TopK":
            continue
        k = constants.get(node.input[1])
        if k is None:
            problems.append(f"TopK {_label(node)} has a data-dependent K")
        elif int(k.reshape(-1)[0]) > TOPK_LIMIT:
            problems.append(f"TopK {_label(node)} has K={int(k.reshape(-1)[0])} > {TOPK_LIMIT}")
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            problems.append(f"{value.name} has a dynamic dimension")
    problems += data_dependent_shapes(model)
    return problems


SMALL_INITIALIZER = 4096  # bytes: shape and index constants stay values for data propagation; weights become typed inputs


def _shape_only_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The graph's nodes with its large initializers replaced by typed inputs: cheap to shape-infer at any size."""
    graph = model.graph
    small = [init for init in graph.initializer if len(init.raw_data) <= SMALL_INITIALIZER and init.data_location != 1]
    small_names = {init.name for init in small}
    weights = [
        onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
        for init in graph.initializer
        if init.name not in small_names
    ]
    light = onnx.helper.make_graph(
        list(graph.node), graph.name, list(graph.input) + weights, list(graph.output), small, value_info=list(graph.value_info)
    )
    return onnx.helper.make_model(light, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def data_dependent_shapes(model: onnx.ModelProto) -> list[str]:
    """Node outputs whose shape ONNX shape inference cannot fix from the graph alone (it depends on the data)."""
    inferred = onnx.shape_inference.infer_shapes(_shape_only_model(model), strict_mode=False, data_prop=True)
    known = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            known[value.name] = [d.HasField("dim_value") for d in value.type.tensor_type.shape.dim]
    problems = []
    for node in model.graph.node:
        for name in node.output:
            if name and (name not in known or not all(known[name])):
                problems.append(f"{node.op_type} {node.name or name} output {name} has a data-dependent shape")
    return problems


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
