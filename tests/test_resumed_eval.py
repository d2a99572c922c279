"""flashvlm-export eval: stopping and resuming (SIGKILL, Ctrl-C, a forced run that stops early), and the one-line
refusals that leave earlier results as they were (issue 36). tests/test_eval.py runs the layouts and the artifacts (this file sorts after it: its split is built by then)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flashvlm_export.evaluation.questions import POPE
from flashvlm_export.evaluation.results import PLOT, RESULTS, TABLE_JSON, TABLE_MD

from conftest import EVAL_BUDGETS, eval_records, expect_one_line, run_eval

BUDGETS = "512,full"  # two answers a question: the stops still land part-way


@pytest.fixture
def split(eval_split) -> Path:
    return eval_split


@pytest.fixture
def demo(eval_demo) -> Path:
    return eval_demo


_evaluate, _records = run_eval, eval_records


def _big_pope(folder: Path, demo: Path, copies: int) -> Path:
    """The synthetic POPE questions repeated under new ids: enough questions that a run can be stopped part-way."""
    source = next((demo / POPE).glob("*.jsonl"))
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    folder.mkdir()
    (folder / "images").symlink_to((demo / POPE / "images").resolve())
    lines = [json.dumps({**row, "question_id": c * 1000 + row["question_id"]}) for c in range(copies) for row in rows]
    (folder / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def _eval_child(split: Path, data: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "flashvlm_export.cli", "eval", "--manifest", str(split), "--data", str(data),
            "--budgets", BUDGETS, "--random-weights", "--out", str(out), "--max-new-tokens", "32", *extra]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_records(out: Path, child: subprocess.Popen, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / RESULTS
        if path.exists() and path.read_text().count("\n") >= count + 1:
            return
        assert child.poll() is None, child.communicate()
        time.sleep(0.02)
    raise AssertionError(f"no {count} records in {timeout} s")


def _whole_lines(out: Path) -> str:
    text = (out / RESULTS).read_text()
    return text[: text.rfind("\n") + 1]


def test_resume_after_a_kill_and_a_ctrl_c_redoes_nothing(split, demo, tmp_path):
    """Killed part-way (SIGKILL), then resumed and stopped again with Ctrl-C, then resumed to the end: each stop keeps
    the results so far (a line the kill cut short is dropped), Ctrl-C's one line says what was kept and the partial
    table is written, and each --resume answers only the questions left, the earlier lines kept byte for byte."""
    total = 24
    data = _big_pope(tmp_path / "pope", demo, copies=total // 6)  # ~0.1 s a question: each stop lands part-way
    out = tmp_path / "out"
    child = _eval_child(split, data, out)
    _wait_for_records(out, child, 3)
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with open(out / RESULTS, "a") as f:  # a line the kill cut short
        f.write('{"qid": "cut short", "budg')
    kept = _whole_lines(out)
    done = kept.count("\n") - 1
    assert 3 <= done < total
    child = _eval_child(split, data, out, "--resume")
    _wait_for_records(out, child, done + 2)
    child.send_signal(signal.SIGINT)
    log, err = child.communicate(timeout=60)
    assert f"{total - done} to answer" in log
    assert child.returncode == 130 and len(err.strip().splitlines()) == 1 and "kept in" in err, err
    assert (out / TABLE_MD).exists() and _whole_lines(out).startswith(kept)
    kept = _whole_lines(out)
    done = kept.count("\n") - 1
    from flashvlm_export.evaluation.job import evaluate

    lines = []  # the last resume in this process (the API the command calls): one child start less
    evaluate(str(data), manifest=str(split), out=str(out), budgets=BUDGETS, random_weights=True, max_new_tokens=32,
             resume=True, log=lines.append)  # fmt: skip
    assert any(f"{total - done} to answer" in line for line in lines), lines
    assert (out / RESULTS).read_text().startswith(kept)
    ids = [r["qid"] for r in _records(out)]
    assert len(ids) == total == len(set(ids)) and "cut short" not in ids


def test_refusals_are_one_line_and_keep_earlier_results(split, demo, tmp_path, capsys):
    """A missing dataset, an unknown layout, a budget the split cannot serve, a picture the data names but lacks: one
    line, exit 2, and the results already in --out unchanged."""
    out = tmp_path / "out"
    _evaluate(split, demo / POPE, out, limit=2)
    before = (out / RESULTS).read_bytes()
    base = ["eval", "--manifest", str(split), "--random-weights", "--out", str(out), "--budgets", EVAL_BUDGETS, "--resume"]
    expect_one_line(capsys, [*base, "--data", str(tmp_path / "nowhere")], "--data", "nowhere")
    expect_one_line(capsys, [*base, "--data", str(demo / POPE), "--layout", "popee"], "popee")
    expect_one_line(capsys, [*base, "--data", str(demo / POPE), "--layout", "mmbench"], "mmbench")
    bad_budget = ["eval", "--manifest", str(split), "--random-weights", "--out", str(out), "--resume", "--budgets", "32,full"]
    expect_one_line(capsys, [*bad_budget, "--data", str(demo / POPE)], "K = 32", "512, 544")
    lacking = _big_pope(tmp_path / "lacking", demo, copies=1)
    (lacking / "images").unlink()
    (lacking / "images").mkdir()
    expect_one_line(capsys, [*base, "--data", str(lacking)], "--images")
    expect_one_line(capsys, [*base[:-1], "--data", str(demo / POPE)], "--resume", "--force")  # earlier results: not replaced
    expect_one_line(capsys, [*base, "--data", str(demo / POPE), "--budgets", "512,full"], "budgets")  # another run's results
    report_only = tmp_path / "report-only"  # an earlier run's report without its results.jsonl: --force, not a new run
    report_only.mkdir()
    (report_only / TABLE_MD).write_text("# an earlier table\n")
    expect_one_line(capsys, [*base[:-1], "--out", str(report_only), "--data", str(demo / POPE)], "report", "--force")
    assert (report_only / TABLE_MD).read_text() == "# an earlier table\n"
    pope = ["--data", str(demo / POPE)]
    expect_one_line(capsys, [*base, *pope, "--max-image-pixels", "100"], "question 1's picture", "over the limit of 100")
    expect_one_line(capsys, [*base, *pope, "--plugin-lib", "x.so"], "--plugin-lib", "--tensorrt")
    assert (out / RESULTS).read_bytes() == before


def test_python_api_spelling(split, demo, tmp_path):
    """From Python, errors name keyword arguments (budgets=...), not flags."""
    from flashvlm_export.errors import UsageError

    with pytest.raises(UsageError, match="budgets="):
        _evaluate(split, demo / POPE, tmp_path / "out", budgets="512,,full")
    assert not os.path.exists(tmp_path / "out")


def test_damaged_pictures_and_unicode_budgets_are_one_line(split, demo, tmp_path, capsys):
    """A damaged picture (a file, or bytes embedded in the data) is refused before anything runs, naming its question;
    a budget in other digits ('16²') is refused, not a traceback."""
    import shutil

    base = ["eval", "--manifest", str(split), "--random-weights", "--budgets", "512,full"]
    broken = tmp_path / "pope"
    shutil.copytree(demo / POPE, broken)
    first = sorted((broken / "images").iterdir())[0]
    first.write_bytes(first.read_bytes()[:200])  # a JPEG cut short
    expect_one_line(capsys, [*base, "--data", str(broken), "--out", str(tmp_path / "a")], "question 1", "Pillow", "--limit")
    rows = [json.loads(line) for line in next((demo / POPE).glob("*.jsonl")).read_text().splitlines()]
    import base64

    embedded = tmp_path / "embedded"
    embedded.mkdir()
    rows[0]["image"] = base64.b64encode(b"not a picture at all" * 20).decode()
    (embedded / "q.jsonl").write_text(json.dumps(rows[0]) + "\n")
    expect_one_line(capsys, [*base, "--data", str(embedded), "--out", str(tmp_path / "b")], "embedded", "Pillow")
    expect_one_line(capsys, ["eval", "--manifest", str(split), "--random-weights", "--budgets", "16\u00b2",
                             "--data", str(demo / POPE), "--out", str(tmp_path / "c")], "16\u00b2")  # fmt: skip
    assert not any((tmp_path / name).exists() for name in "abc")


def test_a_failed_forced_run_changes_nothing(split, demo, tmp_path, capsys):
    """--force over earlier results: until the new run answers its first question, the earlier results and report stay
    as they were (a Ctrl-C, or a crash, before it loses nothing); budgets typed in another order are the same run for
    --resume."""
    out = tmp_path / "out"
    _evaluate(split, demo / POPE, out, limit=2)
    before = {name: (out / name).read_bytes() for name in (RESULTS, TABLE_MD, TABLE_JSON, PLOT)}
    from flashvlm_export.evaluation import item

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    original = item.prepare
    item.prepare = broken
    try:
        with pytest.raises(KeyboardInterrupt):
            _evaluate(split, demo / "gqa", out, force=True)
    finally:
        item.prepare = original
    assert {name: (out / name).read_bytes() for name in before} == before
    _evaluate(split, demo / POPE, out, resume=True, budgets="full,544,512")  # the same budgets, typed in another order
    assert len(_records(out)) == 6
