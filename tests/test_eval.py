"""flashvlm-export eval end to end on the tiny models (issue 36): every layout of the synthetic benchmark through a split
(the encoder once per picture) and a budget-range graph, answers equal to `run`'s for the same picture and prompt,
K = N agreement 1, resume after SIGKILL and after Ctrl-C without redoing a question, and one-line refusals that leave
earlier results as they were.

The tiny graphs here take T_max = 512: the stand-in tokenizer is byte-level, and a multiple-choice prompt in LLaVA's
chat template is ~330 bytes (the tiny models' default T_max is 256)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from flashvlm_export.evaluation.questions import LAYOUTS, POPE
from flashvlm_export.evaluation.results import PLOT, RESULTS, TABLE_JSON, TABLE_MD

from conftest import EVAL_T_MAX, cli_ok, eval_records, expect_one_line, run_eval, shared_folder

T_MAX = EVAL_T_MAX


@pytest.fixture
def split(eval_split) -> Path:
    return eval_split


@pytest.fixture
def demo(eval_demo) -> Path:
    return eval_demo


_export, _evaluate, _records = cli_ok, run_eval, eval_records


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_answers_each_question_at_each_budget(split, demo, tmp_path, layout):
    """Every question once, at 512, 544 and full, with K kept tokens and the benchmark's units; K = N agrees with itself
    (agreement 1 by construction: the same answer compared with itself); the table and the plot are written."""
    result = _evaluate(split, demo / layout, tmp_path / "out")
    records = _records(tmp_path / "out")
    from flashvlm_export.evaluation.layouts import read_dataset

    dataset = read_dataset(demo / layout)
    assert [r["qid"] for r in records] == [q.qid for q in dataset.questions]
    for r in records:
        assert {b: c["kept"] for b, c in r["budgets"].items()} == {"512": 512, "544": 544, "full": 576}
        assert all(0.0 <= c["score"] <= 1.0 for c in r["budgets"].values())
        assert r["budgets"]["544"]["prompt_tokens"] - r["budgets"]["512"]["prompt_tokens"] == 32  # 32 more image rows
    rows = {row.budget: row for row in result.rows}
    assert rows["full"].agreement == 1.0 and rows["full"].kept == 576
    assert rows["512"].units == (3 if layout == "mmbench" else 6)  # MMBench: 3 questions x 2 CircularEval rotations
    table = json.loads((tmp_path / "out" / TABLE_JSON).read_text())
    assert [row["budget"] for row in table["rows"]] == ["512", "544", "full"] and table["header"]["synthetic"]
    assert "accuracy is meaningless" in (tmp_path / "out" / TABLE_MD).read_text()
    from PIL import Image

    with Image.open(tmp_path / "out" / PLOT) as plot:
        assert plot.format == "PNG"


def test_the_encoder_runs_once_per_picture(split, demo, tmp_path, monkeypatch):
    """A split's encoder runs once per question (and once more to warm up), not once per budget."""
    from flashvlm_export.runtime.chain import OrtChain

    calls = []
    original = OrtChain.encode
    monkeypatch.setattr(OrtChain, "encode", lambda self, feeds: calls.append(1) or original(self, feeds))
    _evaluate(split, demo / POPE, tmp_path / "out")
    assert len(calls) == len(_records(tmp_path / "out")) + 1  # + the warm-up run of question 1 (selection, untimed)


def test_answers_are_runs_answers(split, demo, tmp_path):
    """The answer at K = 512 is `run --manifest --budget 512`'s for the same picture and prompt, token for token (the same
    graphs, rows and LLM: equal by construction, on any CPU). The full rows: test_full_rows_are_the_reference_encoders."""
    from flashvlm_export.evaluation.layouts import read_dataset
    from flashvlm_export.evaluation.scoring import rule
    from flashvlm_export.runtime import run

    _evaluate(split, demo / POPE, tmp_path / "out", limit=2)
    dataset = read_dataset(demo / POPE)
    for q, record in zip(dataset.questions, _records(tmp_path / "out"), strict=False):
        ran = run(None, str(q.image), rule(POPE).prompt(q), manifest=str(split), budget=512, random_weights=True, answer=True,
                  max_new_tokens=16, log=lambda _: None)  # fmt: skip
        assert ran.answers["pruned"].token_ids == record["budgets"]["512"]["tokens"]
        assert ran.answers["pruned"].prompt_tokens == record["budgets"]["512"]["prompt_tokens"]


def test_full_rows_are_the_reference_encoders(split, demo):
    from flashvlm_export.evaluation.answering import Selector
    from flashvlm_export.evaluation.layouts import read_dataset
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.runtime.image import prepare_image
    from flashvlm_export.runtime.run_steps import manifest_info

    info, manifest = manifest_info(str(split), 512, False)
    parts = get_parts(info.spec, info.weights, with_embeddings=True)
    selector = Selector(info, read_manifest(split), None, None, False, None, parts)
    q = read_dataset(demo / POPE).questions[0]
    pixels = prepare_image(q.image, info.spec).pixel_values
    text = torch.zeros(1, info.request.t_max, info.spec.text_hidden)
    mask = torch.zeros(1, info.request.t_max, dtype=torch.bool)
    mask[0, :4] = True
    selected = selector.select(pixels, text, mask, [512], full=True)
    with torch.no_grad():
        reference = parts.reference_features(pixels)[2][0]
    torch.testing.assert_close(selected.full_rows, reference, atol=1e-4, rtol=1e-4)
    assert selected.encoder_ms is not None and selected.full_ms == 0.0  # from the encoder's own run, not a second one


def test_a_budget_range_graph_and_positions(tmp_path_factory, demo, tmp_path):
    """qwen2.5-vl-tiny's budget-range graph: any K in 200..240 per call (kept rows cut at `kept`), positions checked by
    the LLM input, and full from the PyTorch reference encoder (its time reported apart)."""

    def build(folder: Path) -> None:
        _export(["--model", "qwen2.5-vl-tiny", "--budget-range", "200..240", "--random-weights", "--t-max", T_MAX,
                 "--exporter", "torchscript", "--out-dir", str(folder)])  # fmt: skip

    graph = shared_folder(tmp_path_factory, "eval_qwen_range", build) / "qwen2.5-vl-tiny_b200-240.onnx"
    from flashvlm_export.evaluation.job import evaluate

    result = evaluate(str(demo / "mmstar"), graph=str(graph), budgets="200,220,full", out=str(tmp_path / "out"),
                      random_weights=True, limit=3, log=lambda _: None)  # fmt: skip
    records = _records(tmp_path / "out")
    assert [c["kept"] for c in records[0]["budgets"].values()] == [200, 220, 256]
    assert all(r["encoder_ms"] is None and r["budgets"]["full"]["selector_ms"] > 0 for r in records)
    assert {row.budget: row.agreement for row in result.rows}["full"] == 1.0


def test_llama_cpp_answers_the_same_prompts(split, demo, tmp_path):
    """--llm-runtime llama.cpp: the same kept rows through llama.cpp; its prompts are transformers' (same lengths)."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[llama]')")
    from flashvlm_export.llm.gguf_file import write_model_gguf
    from flashvlm_export.models.registry import MODELS

    gguf = tmp_path / "tiny.gguf"
    write_model_gguf(MODELS["llava15-tiny"], gguf, log=lambda _: None)
    _evaluate(split, demo / "gqa", tmp_path / "cpp", limit=2, llm_runtime="llama.cpp", gguf=str(gguf))
    _evaluate(split, demo / "gqa", tmp_path / "hf", limit=2)
    for cpp, hf in zip(_records(tmp_path / "cpp"), _records(tmp_path / "hf"), strict=True):
        assert {b: c["prompt_tokens"] for b, c in cpp["budgets"].items()} == {
            b: c["prompt_tokens"] for b, c in hf["budgets"].items()
        }


def test_demo_data_command(tmp_path, capsys):
    from flashvlm_export.cli import main

    assert main(["eval", "--demo-data", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert all((tmp_path / "d" / layout).is_dir() for layout in LAYOUTS) and "synthetic" in out
    expect_one_line(capsys, ["eval", "--demo-data", str(tmp_path / "d")], "--force")
    expect_one_line(capsys, ["eval", "--demo-data", str(tmp_path / "e"), "--data", "x"], "--demo-data")


def test_llm_layers_cuts_the_random_llm(split, demo, tmp_path, capsys):
    """--llm-layers N: the random LLM has N decoder layers (its state dict's layer indices), recorded in the results'
    identity; refused out of range, and with a GGUF (whose layers are its own)."""
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.runtime.answer import build_llm
    from flashvlm_export.runtime.run_steps import manifest_info

    info, _ = manifest_info(str(split), 512, False)
    parts = get_parts(info.spec, info.weights, with_embeddings=True)
    llm = build_llm(info.spec, parts, None, 0, torch.device("cpu"), layers=1)
    layers = {name.split("layers.")[1].split(".")[0] for name in llm.state_dict() if ".layers." in name and "language" in name}
    assert layers == {"0"}
    _evaluate(split, demo / POPE, tmp_path / "out", limit=1, llm_layers=1)
    header = json.loads((tmp_path / "out" / RESULTS).read_text().splitlines()[0])
    assert header["identity"]["llm_layers"] == 1
    base = ["eval", "--manifest", str(split), "--data", str(demo / POPE), "--out", str(tmp_path / "other")]
    expect_one_line(capsys, [*base, "--random-weights", "--llm-layers", "0"], "--llm-layers 0", "1..")
    expect_one_line(
        capsys, [*base, "--random-weights", "--llm-layers", "1", "--llm-runtime", "llama.cpp", "--gguf", "x.gguf"], "--llm-layers"
    )
    assert not (tmp_path / "other").exists()


def test_a_clip_benchmark_through_a_clip_split(tmp_path_factory, demo, tmp_path):
    """A clip graph answers the clip set (a `video` column): the split's encoder run apart (timed once per clip), K = 960's
    answer equal to `run --video --manifest --budget 960`'s for the same clip and prompt, token for token (the same
    graphs, rows, positions rebuilt at the clip's fps, and LLM: equal by construction). A picture benchmark on it: one
    line."""
    from flashvlm_export.errors import UsageError
    from flashvlm_export.evaluation.demo_data import CLIPS
    from flashvlm_export.evaluation.layouts import read_dataset
    from flashvlm_export.evaluation.scoring import rule
    from flashvlm_export.runtime import run

    def build(folder: Path) -> None:
        _export(["--model", "qwen2.5-vl-tiny", "--video", "--frames", "8", "--budget", "992,960", "--random-weights",
                 "--t-max", T_MAX, "--exporter", "torchscript", "--out-dir", str(folder)])  # fmt: skip

    manifest = shared_folder(tmp_path_factory, "eval_clip_split", build) / "qwen2.5-vl-tiny_f8_split" / "manifest.json"
    result = _evaluate(manifest, demo / CLIPS, tmp_path / "out", budgets="960,full", limit=2)
    records = _records(tmp_path / "out")
    assert [c["kept"] for c in records[0]["budgets"].values()] == [960, 1024]
    assert {row.budget: row.agreement for row in result.rows}["full"] == 1.0
    q = read_dataset(demo / CLIPS).questions[0]
    ran = run(None, None, rule("pope").prompt(q), video=str(q.video), manifest=str(manifest), budget=960, random_weights=True,
              answer=True, max_new_tokens=16, log=lambda _: None)  # fmt: skip
    assert all(r["encoder_ms"] is not None for r in records)
    assert ran.answers["pruned"].token_ids == records[0]["budgets"]["960"]["tokens"]
    assert ran.answers["pruned"].prompt_tokens == records[0]["budgets"]["960"]["prompt_tokens"]
    with pytest.raises(UsageError, match="clip graph"):
        _evaluate(manifest, demo / POPE, tmp_path / "pictures", budgets="960")


def test_unlabelled_rows_give_agreement_and_costs(split, demo, tmp_path):
    """Rows without a label (an unlabelled split, its layout named): no accuracy (n/a, null in the JSON), agreement
    with K = N and the costs all the same."""
    rows = [json.loads(line) for line in next((demo / POPE).glob("*.jsonl")).read_text().splitlines()]
    data = tmp_path / "unlabelled"
    data.mkdir()
    (data / "images").symlink_to((demo / POPE / "images").resolve())
    (data / "q.jsonl").write_text("".join(json.dumps({k: v for k, v in row.items() if k != "label"}) + "\n" for row in rows))
    result = _evaluate(split, data, tmp_path / "out", layout=POPE)
    rows_by_budget = {row.budget: row for row in result.rows}
    import math

    assert math.isnan(rows_by_budget["512"].accuracy) and rows_by_budget["full"].agreement == 1.0
    table = json.loads((tmp_path / "out" / TABLE_JSON).read_text())
    assert table["rows"][0]["accuracy"] is None and table["rows"][0]["prefill_tokens"] > 0


def test_openvino_backend_answers_as_onnx_runtime(split, demo, tmp_path):
    """--backend openvino: the split's chain in OpenVINO (the encoder once, full rows from its P(X)); it compiled the
    graphs (its model cache holds blobs), and its kept counts and prompt lengths are ONNX Runtime's."""
    pytest.importorskip("openvino", reason="OpenVINO Runtime is not installed (pip install openvino)")
    import shutil

    from conftest import copy_split

    manifest = copy_split(split, tmp_path)  # OpenVINO's cache goes beside the graphs: a copy of its own
    _evaluate(manifest, demo / POPE, tmp_path / "ov", limit=2, backend="openvino")
    _evaluate(manifest, demo / POPE, tmp_path / "ort", limit=2)
    assert any((manifest.parent / "openvino_cache").rglob("*.blob"))
    for ov, ort in zip(_records(tmp_path / "ov"), _records(tmp_path / "ort"), strict=True):
        assert ov["encoder_ms"] is not None
        assert {b: (c["kept"], c["prompt_tokens"]) for b, c in ov["budgets"].items()} == {
            b: (c["kept"], c["prompt_tokens"]) for b, c in ort["budgets"].items()
        }
    shutil.rmtree(manifest.parent)
