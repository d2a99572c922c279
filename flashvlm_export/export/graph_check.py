"""Static-graph rules: no control flow, no op TensorRT 10.3 builds as a loop, no data-dependent shapes, TopK within
TensorRT's limit, comparisons and logical ops on the input types TensorRT's ONNX parser takes.

Read against the sources (docs/TENSORRT.md "What the static-graph check refuses"):

- LOOP_OPS: TensorRT 10.3 (JetPack 6, Jetson Orin) has no cumulative layer: NVIDIA/TensorRT branch release/10.3,
  include/NvInfer.h has no addCumulative (it first appears in release/10.8). Its ONNX parser builds each of these
  with INetworkDefinition::addLoop, in onnx/onnx-tensorrt branch 10.1-GA, onnxOpImporters.cpp (the newest parser
  branch available here; release/10.3 pins parsers/onnx at 62bdde2, not available): CumSum (importer at line
  1127, addLoop at 1185: one iteration per slice along the axis), GRU (2224, 2364), Loop (2842, 2858), LSTM (2978,
  3068), RNN (4731, 4818), Scan (4965, 5017). No other importer or helper of that branch calls addLoop.
- INPUT_TYPES: the parser's operator matrix, onnx/onnx-tensorrt branch 10.1-GA, docs/operators.md: Equal (line 68),
  Greater (83), GreaterOrEqual (84), Less (102), LessOrEqual (103) take FP32, FP16, BF16, INT32, INT64; And (24),
  Not (129), Or (134), Xor (214) take BOOL.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, numpy_helper

from flashvlm_export.selector.static import TOPK_LIMIT

FORBIDDEN_OPS = ("Loop", "If", "NonZero", "Scan", "Unique")
LOOP_OPS = ("CumSum", "GRU", "Loop", "LSTM", "RNN", "Scan")  # built as an ILoop by TensorRT 10.3's ONNX parser
_NUMERIC = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.INT64)
INPUT_TYPES = {
    **dict.fromkeys(("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual"), _NUMERIC),
    **dict.fromkeys(("And", "Not", "Or", "Xor"), (TensorProto.BOOL,)),
}


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
        if node.op_type in LOOP_OPS:
            problems.append(f"node {_label(node)} is a {node.op_type}, which TensorRT 10.3's ONNX parser builds as a loop")
        elif node.op_type in FORBIDDEN_OPS:
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
    inferred = _inferred(model)
    problems += input_type_problems(model, _elem_types(inferred))
    problems += data_dependent_shapes(model, inferred)
    return problems


def _elem_types(inferred: onnx.ModelProto) -> dict[str, int]:
    """The element type of every tensor shape inference typed: values, inputs, outputs, initializers, constants."""
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for node in graph.node:
        for attr in node.attribute if node.op_type == "Constant" else ():
            if attr.name == "value":
                types[node.output[0]] = attr.t.data_type
    return types


def input_type_problems(model: onnx.ModelProto, types: dict[str, int]) -> list[str]:
    """Comparison and logical nodes with an input of a type the parser's operator matrix does not list for the op
    (an Equal on booleans, an And on numbers), or of a type shape inference could not tell."""
    problems = []
    for node in model.graph.node:
        allowed = INPUT_TYPES.get(node.op_type)
        if allowed is None:
            continue
        bad = sorted({types.get(name) or TensorProto.UNDEFINED for name in node.input if name} - set(allowed))
        if bad:
            names = ", ".join(TensorProto.DataType.Name(t) for t in bad)  # UNDEFINED: shape inference could not tell
            takes = ", ".join(TensorProto.DataType.Name(t) for t in allowed)
            fix = "compare numbers, or use Xor/Not on booleans" if allowed == _NUMERIC else "give it booleans"
            problems.append(f"{node.op_type} {_label(node)} has {names} inputs; TensorRT's parser takes {takes}: {fix}")
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


def _inferred(model: onnx.ModelProto) -> onnx.ModelProto:
    return onnx.shape_inference.infer_shapes(_shape_only_model(model), strict_mode=False, data_prop=True)


def data_dependent_shapes(model: onnx.ModelProto, inferred: onnx.ModelProto | None = None) -> list[str]:
    """Node outputs whose shape ONNX shape inference cannot fix from the graph alone (it depends on the data).
    `inferred`: _inferred(model) when the caller has it."""
    inferred = inferred if inferred is not None else _inferred(model)
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
