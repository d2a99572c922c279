"""The static-graph checker catches what TensorRT's static path cannot take: planted handmade graphs."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from flashvlm_export.export.graph_check import static_graph_problems


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "planted", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _vec(name, n=8, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, [n])


def test_a_clean_static_graph_has_no_problems():
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_vec("x")], [_vec("y")])
    assert static_graph_problems(model) == []


def test_a_loop_is_caught():
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, [])],
    )
    trip = numpy_helper.from_array(np.array(3, dtype=np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    loop = helper.make_node("Loop", ["trip", "cond"], [], body=body)
    model = _model([loop, helper.make_node("Relu", ["x"], ["y"])], [_vec("x")], [_vec("y")], [trip, cond])
    assert any("is a Loop" in p for p in static_graph_problems(model))


def test_an_if_is_caught():
    branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])], "branch", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [8])]
    )
    cond = numpy_helper.from_array(np.array(True), "cond")
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    model = _model([node], [_vec("x")], [_vec("y")], [cond])
    assert any("is a If" in p for p in static_graph_problems(model))


def test_a_nonzero_and_its_data_dependent_shape_are_caught():
    nodes = [helper.make_node("NonZero", ["x"], ["nz"]), helper.make_node("Cast", ["nz"], ["y"], to=TensorProto.FLOAT)]
    model = _model(nodes, [_vec("x")], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    problems = static_graph_problems(model)
    assert any("is a NonZero" in p for p in problems)
    assert any("data-dependent shape" in p for p in problems)


@pytest.mark.parametrize("k, caught", [(3840, False), (3841, True)])
def test_a_topk_beyond_tensorrts_limit_is_caught(k, caught):
    kk = numpy_helper.from_array(np.array([k], dtype=np.int64), "k")
    node = helper.make_node("TopK", ["x", "k"], ["values", "idx"])
    model = _model(
        [node],
        [_vec("x", 4000)],
        [_vec("values", k), helper.make_tensor_value_info("idx", TensorProto.INT64, [k])],
        [kk],
    )
    assert any(f"K={k} > 3840" in p for p in static_graph_problems(model)) == caught


def test_a_topk_with_k_from_data_is_caught():
    node = helper.make_node("TopK", ["x", "k"], ["values", "idx"])
    k_input = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    model = _model([node], [_vec("x"), k_input], [_vec("values"), helper.make_tensor_value_info("idx", TensorProto.INT64, [8])])
    assert any("data-dependent K" in p for p in static_graph_problems(model))


def test_a_shape_computed_from_data_is_caught():
    """Range's length comes from an input value: no Loop, If or NonZero, yet the shape depends on the data."""
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), "zero")
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    nodes = [
        helper.make_node("Range", ["zero", "limit", "one"], ["r"]),
        helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT),
    ]
    limit = helper.make_tensor_value_info("limit", TensorProto.INT64, [])
    model = _model(nodes, [limit], [_vec("y")], [zero, one])
    assert any("Range" in p and "data-dependent shape" in p for p in static_graph_problems(model))


def test_a_dynamic_graph_input_is_caught():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    model = _model(
        [helper.make_node("Relu", ["x"], ["y"])], [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])]
    )
    assert any("x has a dynamic dimension" in p for p in static_graph_problems(model))
    onnx.checker.check_model(model)  # the planted graph is valid ONNX: only our rule rejects it


def _external_graph(folder, k_value: int):
    """A graph whose weight is stored as external data beside it (as an export over 2 GB is), with a TopK of K."""
    weight = numpy_helper.from_array(np.ones((1024, 8), dtype=np.float32), "weight")  # 32 KB: over the threshold
    k = numpy_helper.from_array(np.array([k_value], dtype=np.int64), "k")
    nodes = [helper.make_node("Add", ["x", "weight"], ["h"]), helper.make_node("TopK", ["h", "k"], ["y", "i"])]  # h: (1024, 8)
    outputs = [_vec("y", k_value), _vec("i", k_value, TensorProto.INT64)]
    model = _model(nodes, [_vec("x")], outputs, [weight, k])
    path = folder / "graph.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="graph.onnx.data", size_threshold=4096)
    return path


def test_weights_in_external_data_are_not_read_and_a_small_constant_still_is(tmp_path, monkeypatch):
    path = _external_graph(tmp_path, 4)
    monkeypatch.chdir(tmp_path.parent)  # the data file is not beside the working directory: reading it would fail
    model = onnx.load(str(path), load_external_data=False)
    where = {init.name: init.data_location for init in model.graph.initializer}
    assert where == {"weight": TensorProto.EXTERNAL, "k": TensorProto.DEFAULT}  # planted as an export over 2 GB is
    assert static_graph_problems(model) == []


def test_a_topk_over_the_limit_is_caught_beside_external_weights(tmp_path, monkeypatch):
    path = _external_graph(tmp_path, 4000)
    monkeypatch.chdir(tmp_path.parent)
    problems = static_graph_problems(onnx.load(str(path), load_external_data=False))
    assert len(problems) == 1 and "3840" in problems[0]


# ---------------------------------------------------------------- ops TensorRT 10.3 builds as loops, and input types


def test_a_cumsum_is_caught_by_node_and_op():
    axis = numpy_helper.from_array(np.array(0, dtype=np.int64), "axis")
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], name="running_count")
    model = _model([node], [_vec("x")], [_vec("y")], [axis])
    onnx.checker.check_model(model)  # valid ONNX: only our rule rejects it
    assert static_graph_problems(model) == ["node running_count is a CumSum, which TensorRT 10.3's ONNX parser builds as a loop"]


@pytest.mark.parametrize("op, gates", [("RNN", 1), ("GRU", 3), ("LSTM", 4)])
def test_a_recurrent_layer_is_caught_as_a_loop(op, gates):
    seq, batch, width, hidden = 3, 1, 4, 2
    w = numpy_helper.from_array(np.zeros((1, gates * hidden, width), dtype=np.float32), "w")
    r = numpy_helper.from_array(np.zeros((1, gates * hidden, hidden), dtype=np.float32), "r")
    node = helper.make_node(op, ["x", "w", "r"], ["", "h"], name="recurrent", hidden_size=hidden)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, width])
    model = _model([node], [x], [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, batch, hidden])], [w, r])
    onnx.checker.check_model(model)
    assert static_graph_problems(model) == [f"node recurrent is a {op}, which TensorRT 10.3's ONNX parser builds as a loop"]


def _compare(op: str, dtype: int):
    node = helper.make_node(op, ["a", "b"], ["y"], name="compare")
    out = TensorProto.BOOL if op != "Xor" or dtype == TensorProto.BOOL else dtype
    model = _model([node], [_vec("a", dtype=dtype), _vec("b", dtype=dtype)], [_vec("y", dtype=out)])
    onnx.checker.check_model(model)
    return static_graph_problems(model)


@pytest.mark.parametrize(
    "op, dtype, caught",
    [
        ("Equal", TensorProto.BOOL, True),  # what the exporter made of an int64 floor division (issue 31 item 18)
        ("Equal", TensorProto.UINT8, True),
        ("Less", TensorProto.BOOL, True),
        ("Equal", TensorProto.FLOAT, False),
        ("Equal", TensorProto.INT64, False),
        ("GreaterOrEqual", TensorProto.INT32, False),
        ("Xor", TensorProto.BOOL, False),  # the parser's way to compare booleans
    ],
)
def test_a_comparison_on_a_type_the_parser_does_not_take_is_caught(op, dtype, caught):
    problems = _compare(op, dtype)
    assert bool(problems) == caught
    if caught:
        assert problems == [
            f"{op} compare has {TensorProto.DataType.Name(dtype)} inputs; TensorRT's parser takes FLOAT, FLOAT16, BFLOAT16, "
            "INT32, INT64: compare numbers, or use Xor/Not on booleans"
        ]
