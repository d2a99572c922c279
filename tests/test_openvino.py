"""OpenVINO Runtime as a backend (issue 35): parity, run and bench through it, its model cache, and its refusals.

Each model family's graph is checked on OpenVINO in the module that already exports it (test_qwen.py, test_qwen3.py,
test_llava_next.py, test_qwen_video.py; test_budget_range.py: a split's chain at a budget per image, and bench's start
times: conftest.openvino_parity_passes); LLaVA-1.5 here. A missing OpenVINO is a skip, which fails CI (tests/ci_skips.py): CI installs it (dev extra).
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import expect_one_line, openvino_report

ov = pytest.importorskip("openvino", reason="OpenVINO Runtime is not installed (pip install openvino)")

from flashvlm_export.errors import MissingDependencyError, UsageError  # noqa: E402
from flashvlm_export.openvino_runtime import CACHE_DIRNAME, CACHE_MARK, OpenVinoSession  # noqa: E402


def add_graph(path, constant: float, op: str = "Add", domain: str = ""):
    """A one-node graph y = op(x, c) with c = `constant`: small enough to compile in a blink."""
    init = numpy_helper.from_array(np.full(4, constant, np.float32), "c")
    node = helper.make_node(op, ["x", "c"], ["y"], domain=domain)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("x", "y")]
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    onnx.save(helper.make_model(helper.make_graph([node], "g", io[:1], io[1:], [init]), opset_imports=opsets), path)
    return path


def test_the_parity_command_passes_on_openvino(capsys, tiny_full_graphs):
    """`flashvlm-export parity --graph G --backend openvino --random-weights` (one repeat, no records) on llava15-tiny: static torch and
    the graph in OpenVINO (which compiled it: its cache blob); the other families run the same check in their modules."""
    from flashvlm_export.cli import main

    cache = tiny_full_graphs[64].parent / CACHE_DIRNAME
    shutil.rmtree(cache, ignore_errors=True)
    argv = ["parity", "--graph", str(tiny_full_graphs[64]), "--backend", "openvino", "--random-weights"]
    code = main([*argv, "--repeats", "1", "--no-save"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip().splitlines()[-1].startswith("PASSED"), out
    assert "openvino[CPU]:" in out and "static-torch:" in out and "onnxruntime[" not in out, out
    assert list(cache.glob("*.blob"))


def test_parity_on_openvino_catches_a_planted_wrong_graph(tiny_full_graphs, tiny_parts, tmp_path):
    """The OpenVINO backend is judged, not waved through: a graph whose saliency is negated fails layer 1 or 2 there."""
    model = onnx.load(str(tiny_full_graphs[64]))
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")  # the encoder's attention: saliency's source
    negated = softmax.output[0] + "_planted"
    model.graph.node.insert(list(model.graph.node).index(softmax) + 1, helper.make_node("Neg", [softmax.output[0]], [negated]))
    for node in model.graph.node:
        if node.output[0] != negated:
            node.input[:] = [negated if name == softmax.output[0] else name for name in node.input]
    planted = tmp_path / tiny_full_graphs[64].name
    onnx.save(model, str(planted))
    report = openvino_report(planted, tiny_parts)
    assert report.backend == "openvino[CPU]" and not report, "\n".join(report.lines())  # OpenVINO's verdict: failed
    assert list((tmp_path / CACHE_DIRNAME).glob("*.blob"))  # and OpenVINO computed it


def test_run_selects_on_openvino_and_names_it(capsys, tiny_full_graphs, tmp_path):
    from flashvlm_export.runtime import run

    picture = str(tmp_path / "demo.png")
    cache = tiny_full_graphs[64].parent / CACHE_DIRNAME
    shutil.rmtree(cache, ignore_errors=True)
    result = run(str(tiny_full_graphs[64]), None, "What is here?", demo_image=picture, random_weights=True, backend="openvino")
    assert result.backend == "OpenVINO CPU" and len(result.indices) == 64
    assert list(cache.glob("*.blob"))  # OpenVINO compiled it (a label alone would pass were ONNX Runtime run)
    assert np.all(np.diff(result.indices) > 0)


def test_openvino_with_an_engine_is_refused_in_one_line(capsys, tiny_full_graphs):
    argv = ["run", "--engine", "x.plan", "--image", "x.png", "--question", "q", "--backend", "openvino"]
    expect_one_line(capsys, argv, "--backend openvino", "--engine", "drop one")


def test_missing_openvino_is_one_line(capsys, tiny_full_graphs, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` raises ImportError, as where it is absent
    argv = ["parity", "--graph", str(tiny_full_graphs[64]), "--random-weights", "--backend", "openvino"]
    expect_one_line(capsys, argv, "OpenVINO", "pip install")


def test_a_graph_openvino_cannot_read_is_one_line(capsys, tmp_path):
    """A valid ONNX graph holding an op OpenVINO's ONNX frontend does not convert: the reason, in one line."""
    graph = tmp_path / "unreadable.onnx"
    init = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    node = helper.make_node("TfIdfVectorizer", ["x"], ["y"], mode="TF", min_gram_length=1, max_gram_length=1,
                            max_skip_count=0, ngram_counts=[0], ngram_indexes=[0], pool_int64s=[1])  # fmt: skip
    io = [helper.make_tensor_value_info("x", TensorProto.INT64, [4]), helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]
    onnx.save(
        helper.make_model(helper.make_graph([node], "g", io[:1], io[1:], [init]), opset_imports=[helper.make_opsetid("", 17)]),
        graph,
    )
    with pytest.raises(MissingDependencyError, match=r"OpenVINO \(CPU\) cannot run unreadable.onnx: .*TfIdfVectorizer") as err:
        OpenVinoSession(graph, cache=False)
    assert "\n" not in str(err.value)


def test_a_custom_op_of_another_tool_is_refused_naming_it(tmp_path):
    graph = add_graph(tmp_path / "foreign.onnx", 1.0, op="Fancy", domain="acme")
    with pytest.raises(UsageError, match=r"foreign.onnx: it holds the custom op acme::Fancy, which neither OpenVINO"):
        OpenVinoSession(graph, cache=False)


@pytest.mark.parametrize("ranged", [False, True], ids=["ResidualPrune", "ResidualPruneRange"])
def test_openvino_is_given_the_plugin_op_and_it_equals_onnx_runtimes(tmp_path, ranged):
    """The plugin node alone, in OpenVINO (plugin/openvino_op.py) and in ONNX Runtime (plugin/ort_op.py): the same
    rows, exactly (both run the reference loop on the same float32 Gram; no arithmetic of either runtime between)."""
    pytest.importorskip(
        "onnxruntime_extensions", reason="onnxruntime-extensions is not installed (pip install 'flashvlm-export[plugin-ort]')"
    )
    from flashvlm_export.backend import CPU, ort_session
    from flashvlm_export.plugin import PLUGIN_DOMAIN, PLUGIN_NAME, RANGE_PLUGIN_NAME

    rng = np.random.default_rng(0)
    batch, n, width = 2, 48, 40
    x = rng.standard_normal((batch, n, 8)).astype(np.float32)
    gram = np.einsum("bnd,bmd->bnm", x, x) / 8
    residual = np.stack([rng.permutation(n)[:width] for _ in range(batch)]).astype(np.int32)
    feeds = {"gram": gram, "residual": residual}
    inputs = [helper.make_tensor_value_info("gram", TensorProto.FLOAT, [batch, n, n]),
              helper.make_tensor_value_info("residual", TensorProto.INT32, [batch, width])]  # fmt: skip
    if ranged:
        residual[1, 30:] = -1  # the second image's list is 30 long: its padding
        feeds["budget"] = np.array([24, 20], np.int32)  # K: K_div = K - (N - |R0|) = 16 and 2
        inputs.append(helper.make_tensor_value_info("budget", TensorProto.INT32, [batch]))
        attrs = dict(k_min=4, k_max=48, k_div_max=32, step=4, max_rounds=0)
        op, out_width = RANGE_PLUGIN_NAME, 32
    else:
        attrs, op, out_width = dict(k_div=16, step=4), PLUGIN_NAME, 16
    node = helper.make_node(op, [i.name for i in inputs], ["kept"], domain=PLUGIN_DOMAIN, **attrs,
                            plugin_version="1", plugin_namespace="")  # fmt: skip
    out = helper.make_tensor_value_info("kept", TensorProto.INT32, [batch, out_width])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid(PLUGIN_DOMAIN, 1)]
    graph = tmp_path / "plugin_node.onnx"
    onnx.save(helper.make_model(helper.make_graph([node], "g", inputs, [out]), opset_imports=opsets), graph)
    on_openvino = OpenVinoSession(graph, cache=False).run(["kept"], feeds)[0]
    on_onnxruntime = ort_session(graph, CPU, plugin=True).run(["kept"], feeds)[0]
    assert on_openvino.dtype == np.int32 and np.array_equal(on_openvino, on_onnxruntime)
    assert (on_openvino >= 0).sum() == (32 if not ranged else 16 + 2)  # every image's kept tokens, no rejection


def test_model_cache_serves_a_second_start_and_never_a_replaced_graph(tmp_path):
    """A second start imports the blob (no new one); a graph replaced at the same path gets its own result, not the
    stale blob's (OpenVINO keys a path-compiled model by its path: compiled from the model read, by its content)."""
    graph = add_graph(tmp_path / "g.onnx", 1.0)
    x = {"x": np.zeros(4, np.float32)}
    first = OpenVinoSession(graph)
    cache = tmp_path / CACHE_DIRNAME
    blobs = sorted(cache.glob("*.blob"))
    assert first.cache == cache and len(blobs) == 1 and (cache / CACHE_MARK).is_file()
    again = OpenVinoSession(graph)
    assert sorted(cache.glob("*.blob")) == blobs and again.run(["y"], x)[0].tolist() == [1.0] * 4
    add_graph(graph, 5.0)  # same path, same size, other weights
    assert OpenVinoSession(graph).run(["y"], x)[0].tolist() == [5.0] * 4
    assert len(list(cache.glob("*.blob"))) == 2


def test_force_replaces_a_cache_this_tool_made_and_refuses_one_it_did_not(tmp_path):
    from flashvlm_export.artifacts.ownership import check_replaceable

    graph = add_graph(tmp_path / "g.onnx", 1.0)
    OpenVinoSession(graph)
    (blob,) = (tmp_path / CACHE_DIRNAME).glob("*.blob")
    check_replaceable(blob)  # this tool's mark beside it: replaceable
    (tmp_path / CACHE_DIRNAME / CACHE_MARK).unlink()
    with pytest.raises(UsageError, match="was not written by flashvlm-export"):
        check_replaceable(blob)


def test_bench_backend_needs_a_manifest_and_a_known_runtime(capsys):
    expect_one_line(capsys, ["bench", "--backend", "openvino"], "--manifest")
    expect_one_line(capsys, ["bench", "--manifest", "m.json", "--backend", "onnxruntime,tvm"], "'tvm'", "openvino")
