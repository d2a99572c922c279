"""What `eval` reports: one row per budget K, as a Markdown table, a JSON file and one PNG plot (docs/EVAL.md).

The header dict names the run; every key is optional and read with .get:
  dataset, layout, synthetic (bool), random_weights (bool), model, artifact, runtime, llm_runtime, date, machine,
  questions_total, questions_done, encoder_ms (mean encoder time per question),
  shares ({"input": f, "encoder": f, "selectors": f, "llm": f}: fractions of the whole run's time, summary.time_shares).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from flashvlm_export.artifacts.ownership import PRODUCER
from flashvlm_export.evaluation.budgets import FULL  # the K = N row's name (one home: --budgets' word)

RANDOM_WARNING = "random weights / synthetic data: accuracy is meaningless; the table shows the plumbing and the costs"
SIZE = (800, 500)
ACCURACY_RGB = (31, 119, 180)  # the accuracy points, their line and whiskers: no other element of the plot uses it
PREFILL_RGB = (214, 96, 0)
WARNING_RGB = (190, 0, 0)
GRID_RGB = (225, 225, 225)
INK = (0, 0, 0)


@dataclass
class BudgetRow:
    budget: str  # "32", "64", ..., "full"
    kept: int  # tokens the LLM got: K, or N for "full"
    questions: int  # questions answered at this budget
    units: int  # the benchmark's scoring units (MMBench CircularEval groups; else = questions)
    accuracy: float  # mean unit score, 0..1 (nan: no labels)
    ci_low: float
    ci_high: float
    agreement: float  # fraction of questions whose answer equals the K = N answer (1.0 for "full" by construction)
    prefill_tokens: float  # mean prompt length of the LLM's prefill
    prefill_ms: float  # mean measured prefill time (time to first token of the LLM)
    selector_ms: float  # mean time of the selection step at this budget (full: 0, or the reference encoder's where it runs)
    decode_ms: float  # mean time of the rest of the answer
    seconds_per_question: float  # encoder share + selector + prefill + decode, mean


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _percent(x: float) -> str:
    return f"{100 * x:.1f}" if _finite(x) else "n/a"


def _number(x: float) -> str:
    """A time or a count, short at any scale: 0.00042, 0.31, 12.4, 815, 12,400."""
    if not _finite(x):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}"


def _accuracy_cell(row: BudgetRow) -> str:
    if not _finite(row.accuracy):
        return "n/a (no labels)"
    if _finite(row.ci_low) and _finite(row.ci_high):
        return f"{_percent(row.accuracy)} % ({_percent(row.ci_low)}-{_percent(row.ci_high)})"
    return f"{_percent(row.accuracy)} %"


def _warned(header: dict) -> bool:
    return bool(header.get("synthetic") or header.get("random_weights"))


def table_markdown(rows: list[BudgetRow], header: dict) -> str:
    """The report: what ran where and when, the warning line when the weights are random or the data synthetic, one
    table (a row per budget, in the order given), then how the time divides between encoder, selectors and LLM."""
    h = header.get
    lines = [f"# flashvlm-export eval: {h('dataset', '?')}", ""]
    lines.append(f"- model: {h('model', '?')}; artifact: {h('artifact', '?')}")
    lines.append(f"- runtime: {h('runtime', '?')}; LLM runtime: {h('llm_runtime', '?')}")
    lines.append(f"- machine: {h('machine', '?')}; date: {h('date', '?')}")
    lines.append(f"- questions: {h('questions_done', '?')} of {h('questions_total', '?')} (layout {h('layout', '?')})")
    if _warned(header):
        lines += ["", f"**{RANDOM_WARNING}**"]
    lines += [
        "",
        "| budget | K | accuracy (95 % CI) | agreement with K=N | prefill tokens | prefill ms | selector ms | s/question |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        agreement = f"{_percent(r.agreement)} %" if _finite(r.agreement) else "n/a"
        kept = f"{r.kept} (N)" if r.budget == FULL else str(r.kept)
        cells = [r.budget, kept, _accuracy_cell(r), agreement, _number(r.prefill_tokens), _number(r.prefill_ms)]
        cells += [_number(r.selector_ms), _number(r.seconds_per_question)]
        lines.append("| " + " | ".join(cells) + " |")
    grouped = [r for r in rows if r.units != r.questions]
    if grouped:
        lines += [
            "",
            "accuracy per scoring unit: " + "; ".join(f"{r.budget}: {r.units} of {r.questions} questions" for r in grouped),
        ]
    shares = header.get("shares")  # evaluation/summary.time_shares
    if shares:
        encoder = f" (encoder {_number(h('encoder_ms'))} ms per question)" if _finite(h("encoder_ms")) else ""
        parts = ", ".join(f"{name} {_percent(shares[key])} %" for key, name in _SHARE_NAMES if key in shares)
        lines += ["", f"time shares: {parts}{encoder}"]
    return "\n".join(lines) + "\n"


_SHARE_NAMES = (("input", "picture and prompt"), ("encoder", "encoder"), ("selectors", "selectors"), ("llm", "LLM"))


def _plain(value):
    """JSON's own values: nan and inf -> None, paths -> str, tuples -> lists, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def table_json(rows: list[BudgetRow], header: dict) -> dict:
    """{"producer": "flashvlm-export", "header": header, "rows": [row as a dict, ...]}; a value that is not finite
    (accuracy without labels) becomes null, so json.dumps(..., allow_nan=False) always works."""
    return {"producer": PRODUCER, "header": _plain(dict(header)), "rows": [_plain(asdict(r)) for r in rows]}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, ImportError, OSError, AttributeError):
        return ImageFont.load_default()  # the fixed bitmap font


def _nice_step(top: float, ticks: int = 4) -> float:
    """A step of 1, 2 or 5 times a power of ten that divides [0, top] into about `ticks` parts."""
    raw = top / ticks
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _fit(draw, text: str, font, width: float) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def plot_png(rows: list[BudgetRow], header: dict, path: Path, size: tuple[int, int] = SIZE) -> None:
    """One PNG at `path` (saved by runtime/run_steps.save_png: stamped as this tool's, written atomically): accuracy with
    its 95 % CI whiskers against K (left axis, 0..100 %), prefill ms against K (right axis, from 0), K log2-spaced with
    "full" at K = N labelled "N"; titled with dataset and model, with the warning line for random weights or synthetic
    data. Rows without labels (accuracy nan) plot their prefill time only."""
    from PIL import Image, ImageDraw

    from flashvlm_export.runtime.run_steps import save_png

    if not rows:
        raise ValueError("plot_png needs at least one budget row")
    width, height = size
    if width < 300 or height < 200:
        raise ValueError(f"plot_png: {width}x{height} is too small to read (300x200 at least)")
    font = _font(13)
    picture = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    line = int(draw.textbbox((0, 0), "Kg%", font=font)[3]) + 5

    named = " | ".join(str(header[k]) for k in ("dataset", "model") if header.get(k))
    title = f"{named}: accuracy and prefill time against K" if named else "accuracy and prefill time against K"
    y = 6
    draw.text((10, y), _fit(draw, title, font, width - 20), fill=INK, font=font)
    y += line
    if _warned(header):
        draw.text((10, y), _fit(draw, RANDOM_WARNING, font, width - 20), fill=WARNING_RGB, font=font)
        y += line
    # the legend: a marker in each series' colour
    draw.line([(12, y + line // 2 - 2), (36, y + line // 2 - 2)], fill=ACCURACY_RGB, width=2)
    draw.ellipse([20, y + line // 2 - 6, 28, y + line // 2 + 2], fill=ACCURACY_RGB)
    draw.text((42, y), "accuracy, 95 % CI (left axis)", fill=INK, font=font)
    x = 42 + draw.textlength("accuracy, 95 % CI (left axis)", font=font) + 24
    draw.line([(x, y + line // 2 - 2), (x + 24, y + line // 2 - 2)], fill=PREFILL_RGB, width=2)
    draw.rectangle([x + 8, y + line // 2 - 6, x + 16, y + line // 2 + 2], fill=PREFILL_RGB)
    draw.text((x + 30, y), "prefill ms (right axis)", fill=INK, font=font)
    y += line + 2

    left, right = 62, width - 72
    top, bottom = y + line + 2, height - 2 * line - 10

    # x: log2 of K; one K alone gets a span of its own
    positions = [math.log2(max(r.kept, 1)) for r in rows]
    lo, hi = min(positions), max(positions)
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    pad = 0.06 * (hi - lo)
    lo, hi = lo - pad, hi + pad

    def px(kept: int) -> float:
        return left + (math.log2(max(kept, 1)) - lo) / (hi - lo) * (right - left)

    def py_accuracy(value: float) -> float:
        return bottom - min(max(value, 0.0), 1.0) * (bottom - top)

    prefills = [r.prefill_ms for r in rows if _finite(r.prefill_ms) and r.prefill_ms >= 0]
    peak = max(prefills, default=0.0)
    step = _nice_step(peak) if peak > 0 else 0.25
    ceiling = step * max(math.ceil(peak / step - 1e-9), 1)

    def py_prefill(value: float) -> float:
        return bottom - value / ceiling * (bottom - top)

    # grid and axes
    for tick in range(0, 101, 20):
        ty = py_accuracy(tick / 100)
        draw.line([(left, ty), (right, ty)], fill=GRID_RGB)
        label = f"{tick}"
        draw.text((left - 6 - draw.textlength(label, font=font), ty - line / 2 + 2), label, fill=ACCURACY_RGB, font=font)
    value = 0.0
    while value <= ceiling * (1 + 1e-9):
        ty = py_prefill(value)
        draw.line([(right, ty), (right + 4, ty)], fill=PREFILL_RGB)
        draw.text((right + 7, ty - line / 2 + 2), _number(value), fill=PREFILL_RGB, font=font)
        value += step
    draw.rectangle([left, top, right, bottom], outline=INK)
    draw.text((10, y), "accuracy %", fill=ACCURACY_RGB, font=font)
    label = "prefill ms"
    draw.text((width - 10 - draw.textlength(label, font=font), y), label, fill=PREFILL_RGB, font=font)

    # x ticks: one per distinct K; "full" is N; right to left, a label that would overlap the one after it is left out
    names: dict[int, list[str]] = {}
    for r in rows:
        names.setdefault(r.kept, []).append(r.budget)
    edge = math.inf
    for kept in sorted(names, reverse=True):
        tx = px(kept)
        draw.line([(tx, bottom), (tx, bottom + 4)], fill=INK)
        label = (
            f"{kept}=N"
            if FULL in names[kept] and any(b != FULL for b in names[kept])
            else "N"
            if FULL in names[kept]
            else str(kept)
        )
        half = draw.textlength(label, font=font) / 2
        if tx + half + 4 <= edge:
            draw.text((tx - half, bottom + 6), label, fill=INK, font=font)
            edge = tx - half
    caption = "K: visual tokens the LLM gets (log2 scale; N = all of them, the full run)"
    caption = _fit(draw, caption, font, width - 20)
    draw.text(((width - draw.textlength(caption, font=font)) / 2, bottom + 6 + line), caption, fill=INK, font=font)

    ordered = sorted(rows, key=lambda r: r.kept)
    # prefill ms: line and squares
    points = [(px(r.kept), py_prefill(r.prefill_ms)) for r in ordered if _finite(r.prefill_ms) and r.prefill_ms >= 0]
    if len(points) > 1:
        draw.line(points, fill=PREFILL_RGB, width=2)
    for cx, cy in points:
        draw.rectangle([cx - 4, cy - 4, cx + 4, cy + 4], fill=PREFILL_RGB)
    # accuracy: whiskers, line and dots, drawn last so they stay on top
    labelled = [r for r in ordered if _finite(r.accuracy)]
    for r in labelled:
        if _finite(r.ci_low) and _finite(r.ci_high):
            cx, y0, y1 = px(r.kept), py_accuracy(r.ci_low), py_accuracy(r.ci_high)
            draw.line([(cx, y0), (cx, y1)], fill=ACCURACY_RGB, width=2)
            draw.line([(cx - 5, y0), (cx + 5, y0)], fill=ACCURACY_RGB, width=2)
            draw.line([(cx - 5, y1), (cx + 5, y1)], fill=ACCURACY_RGB, width=2)
    points = [(px(r.kept), py_accuracy(r.accuracy)) for r in labelled]
    if len(points) > 1:
        draw.line(points, fill=ACCURACY_RGB, width=2)
    for cx, cy in points:
        draw.ellipse([cx - 5, cy - 5, cx + 5, cy + 5], fill=ACCURACY_RGB)
    if not labelled:
        note = "no labels: accuracy not measured"
        draw.text(((left + right - draw.textlength(note, font=font)) / 2, top + 8), note, fill=(110, 110, 110), font=font)
    save_png(picture, Path(path))
