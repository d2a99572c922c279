"""--exporter: each exporter writes the graphs export/options.py's EXPORTER_GRAPHS lists, and is refused up front, in
one line naming one that writes it, for the others.

TorchScript used to fail every LLaVA full and encoder graph after the export, with a static-graph error naming no
fix: CLIP's class token `expand(B, 1, -1)` left Where/Equal/ConstantOfShape shape arithmetic that ONNX shape
inference cannot follow (export/onnx_export.py fold_shape_constants now folds it).
"""

from __future__ import annotations

import itertools

import onnx
import pytest

from flashvlm_export.export.graph_check import static_graph_problems
from flashvlm_export.export.graphs import EncoderRequest, ExportRequest, export_graph
from flashvlm_export.export.options import EXPORTER_GRAPHS, EXPORTERS, GRAPH_KINDS
from flashvlm_export.selector.config import SelectorConfig

from conftest import TINY, expect_one_line

FEW_ROUNDS = 560  # of llava15-tiny's N=576: 2 pruning rounds, so each export takes seconds

COMBINATIONS = list(itertools.product(EXPORTERS, GRAPH_KINDS))
SERVED = [(e, k) for e, k in COMBINATIONS if k in EXPORTER_GRAPHS[e]]
REFUSED = [(e, k) for e, k in COMBINATIONS if k not in EXPORTER_GRAPHS[e]]


def request_of(kind: str):
    """A llava15-tiny request of that graph kind (GRAPH_KINDS): LLaVA's CLIP tower is what torchscript failed on."""
    if kind == "encoder":
        return EncoderRequest(spec=TINY, batch=1, precision="fp32", frames=None)
    return ExportRequest(
        spec=TINY,
        budget=FEW_ROUNDS,
        t_max=16,
        batch=1,
        config=SelectorConfig(),
        selector_only=kind in ("selector", "plugin"),
        plugin=kind == "plugin",
    )


@pytest.mark.parametrize(("exporter", "kind"), SERVED, ids=[f"{e}-{k}" for e, k in SERVED])
def test_an_exporter_writes_each_graph_kind_its_table_lists(exporter, kind, tiny_parts, tmp_path):
    request = request_of(kind)
    parts = None if getattr(request, "selector_only", False) else tiny_parts
    graph = export_graph(request, tmp_path / f"{kind}.onnx", parts, "random:0", exporter=exporter)
    assert static_graph_problems(onnx.load(str(graph))) == []  # export_onnx refuses otherwise: checked here on its own


def kinds_argv(kind: str, folder) -> list[str]:
    """An export CLI call that writes a graph of that kind (a split writes an encoder and selectors)."""
    argv = ["--model", "llava15-tiny", "--budget", str(FEW_ROUNDS), "--random-weights", "--out-dir", str(folder)]
    return {
        "full": argv,
        "encoder": [*argv, "--split"],
        "selector": [*argv, "--selector-only"],
        "plugin": [*argv, "--selector-only", "--plugin"],
    }[kind]


@pytest.mark.parametrize(("exporter", "kind"), REFUSED, ids=[f"{e}-{k}" for e, k in REFUSED])
def test_an_exporter_is_refused_up_front_for_a_graph_kind_it_does_not_write(exporter, kind, tmp_path, capsys):
    able = next(name for name in EXPORTERS if kind in EXPORTER_GRAPHS[name])
    expect_one_line(capsys, [*kinds_argv(kind, tmp_path), "--exporter", exporter], f"--exporter {exporter}", f"--exporter {able}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", GRAPH_KINDS)
def test_the_refusal_follows_the_table_for_every_graph_kind(kind, tmp_path, capsys, monkeypatch):
    """Plant a table where torchscript lacks `kind`: the export is refused in one line before any model is loaded
    (the refusal is the table's, for every kind, not a special case for --plugin)."""
    from flashvlm_export.export import options

    planted = {**options.EXPORTER_GRAPHS, "torchscript": tuple(k for k in GRAPH_KINDS if k != kind)}
    monkeypatch.setattr(options, "EXPORTER_GRAPHS", planted)
    err = expect_one_line(capsys, [*kinds_argv(kind, tmp_path), "--exporter", "torchscript"], "--exporter dynamo")
    assert "Model: loaded" not in capsys.readouterr().out + err
    assert list(tmp_path.iterdir()) == []


def test_the_help_says_which_graphs_each_exporter_writes(capsys):
    from flashvlm_export.cli.export import parser

    text = " ".join(parser().format_help().split())
    for exporter, kinds in EXPORTER_GRAPHS.items():
        assert f"{exporter} writes {', '.join(kinds)} graphs" in text, text


def test_a_torchscript_llava_full_graph_passes_parity(tmp_path, capsys):
    """The folded graph computes what the PyTorch reference does: parity's layers 1 and 2 (docs/PARITY.md)."""
    from flashvlm_export.cli import main

    graph = tmp_path / "ts.onnx"
    model = ["--model", "llava15-tiny", "--budget", str(FEW_ROUNDS), "--random-weights"]
    assert main([*model, "--exporter", "torchscript", "--out", str(graph)]) == 0
    assert main(["parity", "--graph", str(graph), "--random-weights", "--repeats", "1", "--no-save"]) == 0
    assert "PASSED" in capsys.readouterr().out


def test_external_data_is_placed_whenever_the_exporter_writes_it(tiny_parts, tmp_path, monkeypatch):
    """A graph's initializers can pass protobuf's 2 GB while the module's parameters do not (folded constants,
    buffers: qwen3-vl-2b's 1.75 GB of parameters exported with torch's exporter writing external data on its own).
    Here the threshold is lowered and the parameters reported as 0 bytes: the data file must still be placed beside
    the graph, and the graph load and run from it."""
    import onnxruntime as ort

    from flashvlm_export.artifacts.naming import external_data_path
    from flashvlm_export.export import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 1024)
    monkeypatch.setattr(onnx_export, "parameter_bytes", lambda module: 0)
    graph = export_graph(request_of("full"), tmp_path / "g.onnx", tiny_parts, "random:0", exporter="torchscript")
    data = external_data_path(graph)
    assert data.is_file() and data.stat().st_size > graph.stat().st_size
    model = onnx.load(str(graph), load_external_data=False)
    assert any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    ort.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
