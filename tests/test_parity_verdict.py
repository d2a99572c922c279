"""The parity verdict can fail: planted wrong backends and graphs are reported as failures (ALGORITHM.md "Parity")."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from flashvlm_export.cli import main
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.export.interface import FUSED_SCORES, GRAM, INDICES
from flashvlm_export.export.onnx_export import export_onnx
from flashvlm_export.parity.backends import TorchModule
from flashvlm_export.parity.compare import SHIPPED_INDICES
from flashvlm_export.parity.run import run_parity
from flashvlm_export.selector import SelectorConfig

from conftest import TINY, Planted

QUIET = dict(log=lambda _: None)


def tiny_request(budget=64, batch=1, config=SelectorConfig()):
    return ExportRequest(spec=TINY, budget=budget, t_max=TINY.t_max, batch=batch, config=config, selector_only=True)


@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("verdict")
    return {
        1: export_graph(tiny_request(), folder / "tiny_b64.onnx", exporter="torchscript"),
        2: export_graph(tiny_request(batch=2), folder / "tiny_b64_bs2.onnx", exporter="torchscript"),
    }


def honest_static(request):
    return TorchModule(request.module(verification=True), request.interface())


def swap_one_token(out):
    kept = out[INDICES][0]
    dropped = np.setdiff1d(np.arange(TINY.n_tokens), kept)[0]
    kept[-1] = dropped  # one kept token replaced by one dropped token
    out[INDICES][0] = np.sort(kept)
    return out


def test_honest_static_torch_passes_layers_1_and_2(tiny_graphs):
    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[honest_static(tiny_request())], **QUIET)
    assert report and report.decisions_checked == 7 and report.arithmetic_passed


def test_one_token_swapped_fails_layer_1(tiny_graphs):
    planted = Planted(honest_static(tiny_request()), swap_one_token)
    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[planted], **QUIET)
    assert not report and not report.decisions_passed
    assert report.arithmetic_passed  # its F and G are honest: only the decision is wrong
    decided = [f for f in report.decision_failures if "decide other indices" in f]
    assert len(decided) == 7  # every image; its visual_embeds no longer match its indices either (step 12's rows)
    assert len(report.decision_failures) == 14 and all("visual_embeds" in f for f in set(report.decision_failures) - set(decided))


def test_shipped_graph_differing_from_its_verification_build_fails_layer_1(tiny_graphs):
    def shipped_differs(out):
        out[SHIPPED_INDICES] = swap_one_token({INDICES: out[INDICES].copy()})[INDICES]
        return out

    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[Planted(honest_static(tiny_request()), shipped_differs)], **QUIET)
    assert not report.decisions_passed and "shipped graph" in report.decision_failures[0]


@pytest.mark.parametrize("swap", ["every output", "indices only"])
def test_images_of_a_batch_swapped_fail(tiny_graphs, swap):
    def swapped(out):
        names = list(out) if swap == "every output" else [INDICES]
        for name in names:
            out[name] = out[name][::-1].copy()
        return out

    (report,) = run_parity(tiny_graphs[2], repeats=1, backends=[Planted(honest_static(tiny_request(batch=2)), swapped)], **QUIET)
    assert not report
    if swap == "indices only":
        assert not report.decisions_passed
    else:  # its decisions match its own (swapped) F and G, but F and G are not the reference's on these images,
        # and its visual_embeds are the other image's rows of P(X)
        assert not report.arithmetic_passed
        assert report.decision_failures and all("visual_embeds" in f for f in report.decision_failures)


def test_a_backend_without_verification_outputs_is_not_passed(tiny_graphs):
    def indices_only(out):
        return {INDICES: out[INDICES]}

    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[Planted(honest_static(tiny_request()), indices_only)], **QUIET)
    assert not report and set(report.missing) >= {FUSED_SCORES, GRAM}
    assert any("NOT CHECKED" in line for line in report.lines())


def export_with_wrong_config(path: Path, wrong: SelectorConfig) -> Path:
    """A graph computed with `wrong` whose metadata says the defaults: what a buggy exporter would ship. K = 544 of 576:
    a few pruning rounds to export and replay (layer 2 checks the scores, whatever K)."""
    honest, bad = tiny_request(budget=544), tiny_request(budget=544, config=wrong)
    return export_onnx(bad.module(verification=True), honest.graph_io(), path, honest.metadata(None), exporter="torchscript")


@pytest.mark.parametrize(
    "field, value",
    [("text_temperature", 0.0505), ("eta", 0.505), ("patch_temperature", 0.0101), ("power", 2.525), ("attenuation", 0.101)],
)
def test_a_hyperparameter_one_percent_off_fails_layer_2(tmp_path, field, value):
    graph = export_with_wrong_config(tmp_path / "wrong.onnx", replace(SelectorConfig(), **{field: value}))
    reports = run_parity(graph, repeats=1, **QUIET)
    onnxruntime = reports[1]
    assert reports[0] and not onnxruntime  # static torch is built from the metadata: honest
    assert onnxruntime.decisions_passed and not onnxruntime.arithmetic_passed


def test_parity_command_exits_nonzero_on_a_planted_graph(tmp_path, capsys):
    graph = export_with_wrong_config(tmp_path / "wrong.onnx", replace(SelectorConfig(), text_temperature=0.0505))
    assert main(["parity", "--graph", str(graph), "--repeats", "1", "--no-save"]) == 1
    out = capsys.readouterr().out
    assert "Layer 2 (arithmetic parity, stated bounds): FAILED for onnxruntime[CPU]" in out and "FAILED:" in out.splitlines()[-1]


def test_parity_command_passes_an_honest_graph_and_saves_the_report(tiny_graphs, tmp_path, capsys):
    import json

    assert main(["parity", "--graph", str(tiny_graphs[1]), "--repeats", "1", "--save-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("PASSED: layers 1 and 2 hold")
    record = json.loads((tmp_path / "tiny_b64_parity.json").read_text())
    assert record["passed"] and [b["backend"] for b in record["backends"]] == ["static-torch", "onnxruntime[CPU]"]
    assert record["backends"][1]["layer1_decisions"]["shipped_equals_verification_build"] == 7


def test_min_overlap_makes_layer_3_a_gate(tiny_graphs):
    honest = honest_static(tiny_request())
    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[Planted(honest, swap_one_token)], min_overlap=1.0, **QUIET)
    assert not report.outcome_passed
    (report,) = run_parity(tiny_graphs[1], repeats=1, backends=[honest], min_overlap=1.0, **QUIET)
    assert report.outcome_passed  # static torch is the reference's own arithmetic on one machine: overlap 1


@pytest.mark.parametrize(
    "content, message",
    [('{"a": 1}', "Dict data, not a list"), ("[[1, 2]]", "holds list data"), ("[]", "the inputs are empty")],
)
def test_load_inputs_of_the_wrong_shape_are_one_line_errors(tiny_graphs, tmp_path, capsys, content, message):
    bad = tmp_path / "inputs.json"
    bad.write_text(content)
    assert main(["parity", "--graph", str(tiny_graphs[1]), "--load-inputs", str(bad), "--no-save"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--budget", "32"], "--budget cannot apply"),
        (["--text-temperature", "0.1"], "--text-temperature cannot apply"),
        (["--corpus-seed", "-1"], "--corpus-seed -1 is out of range"),
        (["--min-overlap", "1.5"], "--min-overlap 1.5 is not a fraction"),
        (["--repeats", "0"], "--repeats 0 is out of range"),
    ],
)
def test_parity_refuses_moot_and_out_of_range_flags(tiny_graphs, capsys, flags, message):
    assert main(["parity", "--graph", str(tiny_graphs[1]), "--no-save", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_graph_whose_shapes_disagree_with_its_metadata_is_refused(tiny_graphs, tmp_path, capsys):
    import onnx

    model = onnx.load(str(tiny_graphs[1]))
    next(p for p in model.metadata_props if p.key == "budget").value = "32"  # an edited budget
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    assert main(["parity", "--graph", str(edited), "--no-save"]) == 2
    assert "does not match its own metadata" in capsys.readouterr().err


def test_an_unwritable_save_dir_is_refused_before_any_work(tiny_graphs, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["parity", "--graph", str(tiny_graphs[1]), "--save-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr()
    assert "--save-dir" in err.err and "Parity:" not in err.out
