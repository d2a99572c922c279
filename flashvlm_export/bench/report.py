"""Bench results as data (JSON) and as the markdown tables the README publishes."""

from __future__ import annotations

import json
from pathlib import Path

from flashvlm_export.artifacts.ownership import PRODUCER, note_written
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.bench.cost import cost_markdown, differences_text, linear_attention_text
from flashvlm_export.progress import plural


def selector_table(rows: list[dict]) -> str:
    backends = list(dict.fromkeys(r["name"] for r in rows if r["section"] == "selector"))
    keys = list(dict.fromkeys((r["n_tokens"], r["budget"]) for r in rows if r["section"] == "selector"))
    lines = ["| N | K | " + " | ".join(backends) + " |", "|---|---|" + "---|" * len(backends)]
    for n, k in keys:
        cells = []
        for backend in backends:
            match = [r for r in rows if r["section"] == "selector" and (r["n_tokens"], r["budget"], r["name"]) == (n, k, backend)]
            cells.append(f"{match[0]['median_ms']:.2f} ({match[0]['p10_ms']:.2f}-{match[0]['p90_ms']:.2f})" if match else "")
        lines.append(f"| {n} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SPLIT_OVERHEAD_TARGET = 0.03  # issue 12: the chain may cost at most 3% of the fused graph's time


def split_tables(rows: list[dict]) -> list[str]:
    """Fused graphs against a split export: time at one budget, disk and peak memory for 1, 3, 5 budgets."""
    out = []
    for r in rows:
        if r["section"] == "split_time":
            f, c = r["fused"], r["chain"]
            out += [
                "",
                f"Fused graph against the split chain at K={r['budget']}, ONNX Runtime CPU, same inputs, interleaved "
                f"({plural(f['repeats'], 'run')} each): fused {f['median_ms']:.1f} ms (p10 {f['p10_ms']:.1f}, p90 {f['p90_ms']:.1f}), "
                f"chain {c['median_ms']:.1f} ms (p10 {c['p10_ms']:.1f}, p90 {c['p90_ms']:.1f}): overhead {100 * r['overhead']:+.2f}% "
                f"(target: under {100 * SPLIT_OVERHEAD_TARGET:.0f}%, {'met' if r['overhead'] < SPLIT_OVERHEAD_TARGET else 'NOT MET'}).",
            ]
    footprint = [r for r in rows if r["section"] == "split_footprint"]
    if footprint:
        out += [
            "",
            "| budgets | disk, fused | disk, split | resident after one run each, fused | split | peak RSS, fused | split |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in footprint:
            out.append(
                f"| {len(r['budgets'])} ({', '.join(map(str, r['budgets']))}) | {r['fused_disk_bytes'] / 1e9:.2f} GB | "
                f"{r['split_disk_bytes'] / 1e9:.2f} GB | {r['fused_resident_gib']:.2f} GiB | {r['split_resident_gib']:.2f} GiB | "
                f"{r['fused_peak_rss_gib']:.2f} GiB | {r['split_peak_rss_gib']:.2f} GiB |"
            )
    return out


def markdown(results: dict) -> str:
    rows = results["rows"]
    m = results["machine"]
    parts = [
        f"Machine: {m['cpu']}, {m['cores']} cores{', GPU ' + m['gpu'] if 'gpu' in m else ', no GPU'}; torch {m['torch']}, "
        f"onnxruntime {m.get('onnxruntime', '-')}; {m['date']}. Command: `{results['command']}`.",
        "",
    ]
    if any(r["section"] == "selector" for r in rows):
        parts += [
            f"Selector core, milliseconds, median (p10-p90), batch 1, prompt of {results['settings']['text_len']} text rows:",
            "",
            selector_table(rows),
        ]
    for r in rows:
        if r["section"] == "full_graph":
            parts += [
                "",
                f"Full graph (CLIP ViT-L/14-336 + projector + selector, random weights), ONNX Runtime CPU: "
                f"{r['median_ms']:.0f} ms median (p10 {r['p10_ms']:.0f}, p90 {r['p90_ms']:.0f}); the selector core "
                f"({r['selector_ms']:.2f} ms) is {100 * r['selector_share']:.2f}% of it.",
            ]
        if r["section"] == "export":
            parts += ["", f"Export (`{r['command']}`): {r['wall_s']} s wall, {r['peak_rss_gib']} GiB peak RSS."]
    parts += split_tables(rows)
    prefill = [r for r in rows if r["section"] == "prefill"]
    if prefill:
        parts += ["", "| visual tokens | prefill ms (median) |", "|---|---|"]
        parts += [f"| {r['visual_tokens']} (+{r['text_tokens']} text) | {r['median_ms']:.2f} |" for r in prefill]
    parts += [
        "",
        "Cost calculator (geometry, not measured):",
        "",
        cost_markdown(),
        "",
        linear_attention_text(),
        "",
        differences_text(),
    ]
    return "\n".join(parts) + "\n"


def save(results: dict, out_dir: Path) -> tuple[Path, Path]:
    """bench.json and bench.md, replaced together (only the tool's own earlier results: artifacts/ownership.py)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    with atomic_outputs([json_path, md_path], overwrite=True) as (temp_json, temp_md):
        record = {"producer": PRODUCER, **json.loads(json.dumps(results, default=str))}
        temp_json.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        temp_md.write_text(markdown(results))
    note_written([md_path])  # Markdown carries no stamp: the folder's ledger lists it
    return json_path, md_path
