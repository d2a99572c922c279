"""From results.jsonl's lines to the report: a row per budget (accuracy and its 95 % interval in the benchmark's units,
agreement with the K = N answer, prefill tokens and times), where the time went, and the files (table.md, table.json,
accuracy.png) written whole beside the results."""

from __future__ import annotations

import math
import time

from flashvlm_export.evaluation.budgets import FULL
from flashvlm_export.evaluation.report import BudgetRow, plot_png, table_json, table_markdown
from flashvlm_export.evaluation.results import PLOT, TABLE_JSON, TABLE_MD
from flashvlm_export.evaluation.scoring import units
from flashvlm_export.evaluation.stats import mean_interval
from flashvlm_export.progress import plural


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def budget_rows(dataset, records: list[dict], budgets: list[str]) -> list[BudgetRow]:
    """One row per budget over `records` (in the dataset's order). Agreement: the fraction of questions whose answer,
    as the rule reads it (scoring.answer_key), is the K = N answer's; nan when full was not asked for."""
    by_id = {q.qid: q for q in dataset.questions}
    questions = [by_id[r["qid"]] for r in records]
    rows = []
    for budget in budgets:
        cells = [r["budgets"][budget] for r in records]
        labelled = [(q, c["score"]) for q, c in zip(questions, cells, strict=True) if c["score"] is not None]
        scores = units(dataset.layout, [q for q, _ in labelled], [s for _, s in labelled])
        accuracy, low, high = mean_interval(scores) if scores else (math.nan, math.nan, math.nan)  # no labels
        agree = math.nan
        if FULL in budgets:
            agree = _mean(float(c["key"] == r["budgets"][FULL]["key"]) for c, r in zip(cells, records, strict=True))
        rows.append(
            BudgetRow(
                budget=budget, kept=round(_mean(c["kept"] for c in cells)), questions=len(cells), units=len(scores),
                accuracy=accuracy, ci_low=low, ci_high=high, agreement=agree,
                prefill_tokens=_mean(c["prompt_tokens"] for c in cells), prefill_ms=_mean(c["prefill_ms"] for c in cells),
                selector_ms=_mean(c["selector_ms"] for c in cells), decode_ms=_mean(c["decode_ms"] for c in cells),
                seconds_per_question=_mean(c["seconds"] for c in cells),
            )
        )  # fmt: skip
    return rows


def time_shares(records: list[dict], budgets: list[str]) -> dict[str, float]:
    """Fractions of the whole eval's time: the picture and prompt, the encoder (a split's, once per picture; the
    reference encoder for full elsewhere), the selectors (each budget's), the LLM (prefill and decoding)."""
    total = {"input": 0.0, "encoder": 0.0, "selectors": 0.0, "llm": 0.0}
    for r in records:
        total["input"] += r["input_ms"]
        total["encoder"] += r["encoder_ms"] or 0.0
        for budget in budgets:
            cell = r["budgets"][budget]
            total["encoder" if budget == FULL else "selectors"] += cell["selector_ms"]
            total["llm"] += cell["prefill_ms"] + cell["decode_ms"]
    whole = sum(total.values())
    return {k: v / whole for k, v in total.items()} if whole > 0 else {}


def _machine() -> str:
    """ "AMD EPYC 7B13, 2 cores, torch 2.13.0+cpu, onnxruntime 1.32.0" (bench/suite.machine)."""
    from flashvlm_export.bench.suite import machine

    m = machine()
    found = [m["cpu"], f"{m['cores']} cores", m.get("gpu"), f"torch {m['torch']}"]
    found.append(f"onnxruntime {m['onnxruntime']}" if "onnxruntime" in m else None)
    return ", ".join(x for x in found if x)


def write_report(dataset, store, budgets: list[str], rule, header: dict, partial: bool, log) -> list[BudgetRow]:
    """table.md, table.json and accuracy.png from every answered question, each written whole."""
    from flashvlm_export.artifacts.ownership import note_written
    from flashvlm_export.artifacts.placement import write_json_atomic

    order = {q.qid: i for i, q in enumerate(dataset.questions)}
    records = sorted((r for r in store.records.values() if r["qid"] in order), key=lambda r: order[r["qid"]])
    rows = budget_rows(dataset, records, budgets)
    encoders = [r["encoder_ms"] for r in records if r["encoder_ms"] is not None]
    header = dict(header)
    header.update(
        questions_done=len(records), shares=time_shares(records, budgets), encoder_ms=_mean(encoders) if encoders else None,
        date=time.strftime("%Y-%m-%d"), machine=_machine(),
        runtime=header.get("selection", "?"), partial=partial,
    )  # fmt: skip
    folder = store.folder
    markdown = table_markdown(rows, header)
    temp = folder / f".{TABLE_MD}.tmp"
    temp.write_text(markdown)
    temp.replace(folder / TABLE_MD)
    note_written([folder / TABLE_MD])  # the folder's ledger: a later --force may replace it
    write_json_atomic(folder / TABLE_JSON, table_json(rows, header))
    plot_png(rows, header, folder / PLOT)
    state = "so far (the run stopped)" if partial else "done"
    log(f"Eval: {len(records)} of {header['questions_total']} questions {state}: {folder / TABLE_MD}, {TABLE_JSON}, {PLOT}")
    for row in rows:
        agreement = "" if math.isnan(row.agreement) else f", agreement with K=N {row.agreement:.0%}"
        accuracy = "no labels" if math.isnan(row.accuracy) else (
            f"accuracy {row.accuracy:.1%} [{row.ci_low:.1%}, {row.ci_high:.1%}] over {plural(row.units, 'unit')}"
        )  # fmt: skip
        log(
            f"Eval: {row.budget:>5} K={row.kept}: {accuracy}{agreement}, prefill {row.prefill_tokens:.0f} tokens "
            f"{row.prefill_ms:.1f} ms, {row.seconds_per_question:.2f} s/question"
        )
    return rows
