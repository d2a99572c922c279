"""The selector computes in fp32 in a reduced-precision graph: the ONNX-level check trt/build.py applies.

trt/build.py builds strongly typed, so TensorRT computes each layer in the types the graph declares;
trt/precision.py reads them off the ONNX file with shape inference. These tests run that check on the
exported llava15-tiny --precision fp16 graphs (with and without --plugin) and on hand-edited graphs
where a selector node computes in fp16. What they do not prove: that TensorRT's ONNX parser keeps
every type as declared (the parser maps ONNX types one to one in strongly typed mode, read against
its sources only), nor anything about an engine run; no TensorRT runs here.
"""

import onnx
import pytest
from onnx import TensorProto, helper

from flashvlm_export.artifact_paths import load_graph
from flashvlm_export.cli import main
from flashvlm_export.errors import FlashVLMError
from flashvlm_export.trt import build, precision
from flashvlm_export.trt.precision import compute_type, precision_plan, tensor_types

# The layers the review found unpinned on TensorRT 10's weakly typed path: they take fp32 inputs. Since the stable
# order is two TopKs (selector/static.py), its Greater is gone; its run counts are MatMuls over fp32 0/1 flags, exact
# only in fp32 (n reaches 3840; fp16 holds integers exactly only up to 2048), no longer a CumSum (issue 31 item 19).
REVIEWED_OPS = {"TopK", "Equal", "GreaterOrEqual", "MatMul"}


@pytest.fixture(scope="module", params=[False, True], ids=["unrolled", "plugin"])
def fp16_graph(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fp16")
    flags = ["--plugin"] if request.param else []
    # K = 544: every selector node kind in a few unrolled rounds (the default K = 128 unrolls 56, minutes of dynamo)
    argv = [
        "--model",
        "llava15-tiny",
        "--random-weights",
        "--precision",
        "fp16",
        "--budget",
        "544",
        *flags,
        "--out-dir",
        str(folder),
    ]
    assert main(argv) == 0
    (path,) = folder.glob("*.onnx")
    return path


def test_compute_type_is_the_reduced_type_when_any_float_tensor_is_reduced():
    assert compute_type(["fp32", "fp32", "int64"]) == "fp32"
    assert compute_type(["fp32", "fp16"]) == "fp16"  # a cast back computes on the fp16 side
    assert compute_type(["bf16", "fp32"]) == "bf16"
    assert compute_type(["int64", "bool"]) == "int"
    assert compute_type(["fp32", None]) == "unknown"


def test_exported_fp16_graph_has_no_selector_node_outside_fp32(fp16_graph):
    plan = precision_plan(load_graph(fp16_graph))
    assert plan.violations() == []
    assert plan.has_reduced and len(plan.casts_back) == 3  # X, a and P(X) return to fp32
    assert any(n.computes_in == "fp16" and n.op_type in ("MatMul", "Conv") for n in plan.nodes if not n.selector)


def test_every_float_tensor_of_every_selector_node_is_fp32(fp16_graph):
    """Read independently of compute_type: the types of the selector nodes' tensors themselves."""
    model = load_graph(fp16_graph)
    types = tensor_types(model)
    selector = {n.name for n in precision_plan(model).selector_nodes}
    for node in model.graph.node:
        if (node.name or node.output[0]) in selector:
            floats = {types[t] for t in (*node.input, *node.output) if t and types[t] in ("fp32", "fp16", "bf16", "fp64")}
            assert floats <= {"fp32"}, (node.name, node.op_type, floats)


def test_the_reviewed_layers_are_selector_nodes_held_in_fp32(fp16_graph):
    plan = precision_plan(load_graph(fp16_graph))
    held = plan.held_fp32
    reviewed = [n for n in plan.selector_nodes if n.op_type in REVIEWED_OPS]
    assert {n.op_type for n in reviewed} == REVIEWED_OPS
    assert all(n.name in held for n in reviewed)
    model = load_graph(fp16_graph)
    types = tensor_types(model)
    to_int64 = [
        n
        for n in model.graph.node
        if n.op_type == "Cast" and types.get(n.input[0]) == "fp32" and types.get(n.output[0]) == "int64"
    ]
    assert to_int64 and all(n.name in held for n in to_int64)


def test_the_build_applies_this_plan_not_a_copy():
    assert build.precision_plan is precision.precision_plan
    assert build.compute_type is precision.compute_type


def _compute_node_in_fp16(model, node_index: int):
    """Hand edit: node `node_index` gets its first input cast to fp16 and casts each float output back.

    Tensor names the rest of the graph sees keep their types; shape inference types the new ones.
    """
    node = model.graph.node[node_index]
    types = tensor_types(model)
    source = node.input[0]
    cast_in = helper.make_node("Cast", [source], [source + "_planted16"], to=TensorProto.FLOAT16, name="planted_cast_in")
    node.input[0] = source + "_planted16"
    casts_out = []
    for j, out in enumerate(node.output):
        if types.get(out) == "fp32":
            node.output[j] = out + "_planted16"
            casts_out.append(helper.make_node("Cast", [node.output[j]], [out], to=TensorProto.FLOAT, name=f"planted_out{j}"))
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend([*nodes[:node_index], cast_in, nodes[node_index], *casts_out, *nodes[node_index + 1 :]])
    return model


@pytest.fixture(scope="module")
def planted_graph(fp16_graph, tmp_path_factory):
    """The exported graph with one selector TopK computing in fp16 (and its name)."""
    model = load_graph(fp16_graph)
    plan = precision_plan(model)
    index, name = next(
        (i, n.name) for i, n in enumerate(plan.nodes) if n.selector and n.op_type == "TopK" and n.computes_in == "fp32"
    )
    model = _compute_node_in_fp16(model, index)
    path = tmp_path_factory.mktemp("planted") / "planted.onnx"
    onnx.save(model, str(path))
    return path, name


def test_a_selector_topk_computing_in_fp16_is_reported(planted_graph):
    path, name = planted_graph
    bad = precision_plan(load_graph(path)).violations()
    assert any(v.startswith(f"{name} (TopK) computes in fp16") for v in bad), bad


def test_the_build_refuses_the_planted_graph_before_tensorrt(planted_graph, tmp_path):
    path, name = planted_graph
    with pytest.raises(FlashVLMError, match=f"selector must compute in fp32 but .*{name} \\(TopK\\) computes in fp16"):
        build.build_engine(path, tmp_path / "x.plan", {}, "fp16")
    assert not (tmp_path / "x.plan").exists()


def test_the_sidecar_command_refuses_the_planted_graph(planted_graph, tmp_path, capsys):
    path, name = planted_graph
    engine = tmp_path / "x.plan"
    engine.write_bytes(b"not checked: the graph is refused first")
    assert main(["sidecar", "--engine", str(engine), "--onnx", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and name in err[0] and not (tmp_path / "x.json").exists()


def test_a_reduced_graph_without_a_cast_back_is_reported():
    """A graph that never returns to fp32: its whole selector would run in fp16."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8])
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    values = helper.make_tensor_value_info("values", TensorProto.FLOAT16, [1, 2])
    indices = helper.make_tensor_value_info("indices", TensorProto.INT64, [1, 2])
    topk = helper.make_node("TopK", ["x", "k"], ["values", "indices"], name="topk")
    graph = helper.make_graph([topk], "fp16_only", [x], [values, indices], initializer=[k])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    bad = precision_plan(model).violations()
    assert "topk (TopK) computes in fp16" in bad and any("no Cast back to fp32" in v for v in bad)


def test_qwen3_vl_fp16_graphs_end_the_encoder_at_the_deepstack_rows_too(tmp_path):
    """Qwen3-VL's DeepStack mergers feed deepstack_features only, none of X, a, P(X): unless that name ends the encoder
    side too, the check counts the mergers as selector nodes computing in fp16 and refuses the encoder graph and the
    fused graph (as it did before interface.ENCODER_OUTPUTS was its list of names)."""
    common = ["--model", "qwen3-vl-tiny", "--random-weights", "--precision", "fp16", "--exporter", "torchscript"]
    assert main([*common, "--budget", "32", "--split", "--out-dir", str(tmp_path / "split")]) == 0
    assert main([*common, "--budget", "32", "--fused", "--out-dir", str(tmp_path / "fused")]) == 0
    (encoder,) = tmp_path.glob("split/*/encoder.onnx")
    (fused,) = tmp_path.glob("fused/*.onnx")
    for path in (encoder, fused):
        model = load_graph(path)
        plan = precision_plan(model)
        assert plan.violations() == [], (path.name, plan.violations()[:3])
        ends = {n.output[0] for n in model.graph.node if (n.name or n.output[0]) in plan.casts_back}
        assert "deepstack_features" in ends, (path.name, ends)
        merger = [n for n in plan.nodes if "deepstack_mergers" in n.name and n.computes_in == "fp16"]
        assert merger and not any(n.selector for n in merger)  # fp16, on the encoder side
