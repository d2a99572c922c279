"""eval's statistics (evaluation/stats.py) and report (evaluation/report.py): intervals checked against the formula
written out here and published values, the Markdown and JSON tables, and the PNG plot read back."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from flashvlm_export.evaluation.report import (
    ACCURACY_RGB,
    RANDOM_WARNING,
    BudgetRow,
    plot_png,
    table_json,
    table_markdown,
)
from flashvlm_export.evaluation.stats import mean_interval, wilson_interval

Z = 1.959964


def wilson_by_hand(k: float, n: int, z: float = Z) -> tuple[float, float]:
    """The Wilson bounds as the roots of (p - q)^2 = z^2 q (1 - q) / n in q: a q^2 + b q + c = 0."""
    p = k / n
    a = 1 + z * z / n
    b = -(2 * p + z * z / n)
    c = p * p
    root = math.sqrt(b * b - 4 * a * c)
    return (-b - root) / (2 * a), (-b + root) / (2 * a)


@pytest.mark.parametrize("k,n", [(0, 10), (5, 10), (1, 3), (37, 50), (999, 1000), (12.5, 40)])
def test_wilson_matches_the_formula(k, n):
    low, high = wilson_interval(k, n)
    assert (low, high) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)


def test_wilson_published_values():
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=5e-5)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=5e-5)


@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_wilson_edges_stay_in_unit_interval(n):
    for k in (0, n):
        low, high = wilson_interval(k, n)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0


def test_wilson_depends_on_z():
    assert wilson_interval(5, 10, z=1.0) != pytest.approx(wilson_interval(5, 10))
    assert wilson_interval(5, 10, z=1.0) == pytest.approx(wilson_by_hand(5, 10, z=1.0), abs=1e-12)
    narrow, wide = wilson_interval(5, 10, z=1.0), wilson_interval(5, 10, z=2.576)
    assert wide[0] < narrow[0] and wide[1] > narrow[1]


@pytest.mark.parametrize("k,n", [(1, 0), (-1, 5), (6, 5)])
def test_wilson_refuses(k, n):
    with pytest.raises(ValueError):
        wilson_interval(k, n)


def test_mean_interval_fractional():
    # mean 0.6, sample sd 0.2 (n - 1 = 2), half width 1.959964 * 0.2 / sqrt(3) = 0.2263172
    mean, low, high = mean_interval([0.4, 0.6, 0.8])
    assert (mean, low, high) == pytest.approx((0.6, 0.6 - 0.2263172, 0.6 + 0.2263172), abs=1e-6)
    assert mean_interval([0.9, 1.0, 1.0, 0.95])[2] == 1.0  # clipped
    assert mean_interval([0.3]) == (0.3, 0.0, 1.0)


def test_mean_interval_binary_is_wilson():
    scores = [1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0]
    mean, low, high = mean_interval(scores)
    assert mean == pytest.approx(8 / 12)
    assert (low, high) == pytest.approx(wilson_interval(8, 12), abs=1e-15)
    assert mean_interval([1.0]) == (1.0, *wilson_interval(1, 1))
    for bad in ([], [0.5, math.nan], [1.5]):
        with pytest.raises(ValueError):
            mean_interval(bad)


def row(budget: str, kept: int, accuracy: float, prefill_ms: float = 10.0) -> BudgetRow:
    low, high = wilson_interval(round(accuracy * 100), 100) if math.isfinite(accuracy) else (math.nan, math.nan)
    return BudgetRow(budget, kept, 100, 100, accuracy, low, high, 0.9, kept + 40.0, prefill_ms, 1.5, 30.0, 0.25)


ROWS = [row("32", 32, 0.41, 8.0), row("64", 64, 0.52, 9.0), row("128", 128, 0.6, 12.0), row("full", 576, 0.65, 40.0)]
HEADER = {"dataset": "MMStar (val)", "layout": "mmstar", "synthetic": True, "model": "llava15-tiny", "encoder_ms": 12.0}
HEADER["shares"] = {"input": 0.01, "encoder": 0.2, "selectors": 0.04, "llm": 0.75}


def test_table_markdown():
    text = table_markdown(ROWS, HEADER)
    assert f"**{RANDOM_WARNING}**" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(ROWS)
    assert "agreement with K=N" in table[0] and "s/question" in table[0]
    for r, line in zip(ROWS, table[1:], strict=True):
        assert line.startswith(f"| {r.budget} | {r.kept}")
        assert f"{100 * r.accuracy:.1f} %" in line
    assert "time shares: picture and prompt 1.0 %, encoder 20.0 %, selectors 4.0 %, LLM 75.0 %" in text
    assert RANDOM_WARNING not in table_markdown(ROWS, {**HEADER, "synthetic": False})
    assert RANDOM_WARNING in table_markdown(ROWS, {"random_weights": True})
    assert "n/a (no labels)" in table_markdown([row("full", 576, math.nan)], {})


def test_table_json():
    data = table_json(ROWS, HEADER)
    assert data["producer"] == "flashvlm-export"
    back = json.loads(json.dumps(data, allow_nan=False))
    assert back["header"] == HEADER
    assert [r["budget"] for r in back["rows"]] == ["32", "64", "128", "full"]
    assert back["rows"][1]["accuracy"] == 0.52
    unlabelled = table_json([row("64", 64, math.nan)], {"encoder_ms": math.inf})
    assert json.loads(json.dumps(unlabelled, allow_nan=False))["rows"][0]["accuracy"] is None


def accuracy_rows(picture: Image.Image) -> np.ndarray:
    """The y of every pixel in the accuracy colour."""
    pixels = np.asarray(picture.convert("RGB"))
    return np.nonzero(np.all(pixels == ACCURACY_RGB, axis=-1))[0]


def test_plot_png(tmp_path):
    path = tmp_path / "eval.png"
    plot_png(ROWS, HEADER, path, size=(800, 500))
    with Image.open(path) as picture:
        assert picture.format == "PNG" and picture.size == (800, 500)
        assert picture.text["Software"] == "flashvlm-export"
    other = tmp_path / "other.png"
    plot_png(ROWS, HEADER, other, size=(640, 400))
    with Image.open(other) as picture:
        assert picture.size == (640, 400)


def test_plot_follows_the_accuracies(tmp_path):
    high, low = tmp_path / "high.png", tmp_path / "low.png"
    plot_png([replace(r, accuracy=0.9, ci_low=0.85, ci_high=0.95) for r in ROWS], HEADER, high)
    plot_png([replace(r, accuracy=0.1, ci_low=0.05, ci_high=0.15) for r in ROWS], HEADER, low)
    with Image.open(high) as a, Image.open(low) as b:
        ys_high, ys_low = accuracy_rows(a), accuracy_rows(b)
        assert np.asarray(a).tobytes() != np.asarray(b).tobytes()
    assert ys_high.mean() + 100 < ys_low.mean()  # higher accuracy: the points sit higher up (smaller y)


@pytest.mark.parametrize(
    "rows",
    [
        [row("full", 576, 0.7)],  # one row
        [row("64", 64, math.nan, 0.0004), row("full", 576, math.nan, 25000.0)],  # no labels, tiny and huge times
        [row("576", 576, 0.6), row("full", 576, 0.6)],  # equal K
        [row("64", 64, 0.5, 0.0), row("128", 128, 0.5, math.nan)],  # no prefill time to plot
    ],
)
def test_plot_odd_rows(tmp_path, rows):
    path = tmp_path / "odd.png"
    plot_png(rows, {"random_weights": True}, path)
    with Image.open(path) as picture:
        assert picture.size == (800, 500)


def test_equal_fractional_scores_get_a_width():
    """Equal fractional scores (s = 0): not a point interval, the Wilson interval of their sum (0.6 of 2 -> as 0.3 x 2)."""
    mean, low, high = mean_interval([0.3, 0.3])
    assert mean == pytest.approx(0.3) and (low, high) == pytest.approx(wilson_interval(0.6, 2)) and low < 0.3 < high


def test_budget_rows_from_records():
    """summary.budget_rows on hand-made lines: accuracy over the labelled questions only, agreement over all (labels or
    not), s/question the mean of each line's own, MMBench groups counted once complete."""
    from flashvlm_export.evaluation.questions import MMBENCH, POPE, Dataset, Question
    from flashvlm_export.evaluation.summary import budget_rows, time_shares

    def cell(key, score, seconds, selector=1.0):
        return {"kept": 4, "key": key, "score": score, "prompt_tokens": 10, "prefill_ms": 2.0, "decode_ms": 3.0,
                "selector_ms": selector, "seconds": seconds}  # fmt: skip

    questions = [Question(str(i), "?", answer, b"") for i, answer in enumerate(["yes", "no", None])]
    records = [
        {"qid": "0", "input_ms": 1.0, "encoder_ms": 4.0, "budgets": {"4": cell("yes", 1.0, 1.0), "full": cell("yes", 1.0, 2.0, 0.0)}},
        {"qid": "1", "input_ms": 1.0, "encoder_ms": 4.0, "budgets": {"4": cell("yes", 0.0, 3.0), "full": cell("no", 1.0, 2.0, 0.0)}},
        {"qid": "2", "input_ms": 1.0, "encoder_ms": 4.0, "budgets": {"4": cell("no", None, 5.0), "full": cell("no", None, 2.0, 0.0)}},
    ]  # fmt: skip
    rows = {r.budget: r for r in budget_rows(Dataset(POPE, "t", (), questions), records, ["4", "full"])}
    assert (rows["4"].accuracy, rows["4"].units, rows["full"].accuracy) == (0.5, 2, 1.0)  # the unlabelled one left out
    assert rows["4"].agreement == pytest.approx(2 / 3) and rows["full"].agreement == 1.0  # all three compared
    assert rows["4"].seconds_per_question == pytest.approx(3.0)
    shares = time_shares(records, ["4", "full"])  # input 3, encoder 12, selectors 3, LLM 6 x 5 = 30 (ms)
    assert shares == pytest.approx({"input": 3 / 48, "encoder": 12 / 48, "selectors": 3 / 48, "llm": 30 / 48})
    group = [Question(q, "?", "A", b"", group="7", rotations=2) for q in ("7", "1000007")]
    one = [{**records[0], "qid": "7", "budgets": {"4": cell("A", 1.0, 1.0)}}]
    assert budget_rows(Dataset(MMBENCH, "t", (), group), one, ["4"])[0].units == 0  # one copy of two: no unit yet
