"""One selector for every budget against one per budget, measured in one run (ONNX Runtime CPU, llava15, N=576).

`flashvlm-export bench --range`: the range selector (--budget-range RANGE) at K = 32, 128, 192 beside the
fixed-budget selector of each K on the same inputs, each in blocks of runs (two passes, the second reversed); the full pipeline graph at K=128 for
the share; the floor the rounds are compared with (steps 2-5 and 10's two GEMMs with their norms, in torch); and
disk and memory of one range selector against one selector per budget (a fresh process per layout, as bench/split.py).
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from flashvlm_export.artifacts.ownership import note_written
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.backend import CPU
from flashvlm_export.bench.timing import HEADER, Timing, measure
from flashvlm_export.export.interface import BUDGET
from flashvlm_export.progress import plural

RANGE = (16, 256)
BUDGETS = (32, 128, 192)
FULL_BUDGET = 128


def _in_blocks(runners: dict, warmup: int, repeats: int) -> dict[str, Timing]:
    """Each runner in a block of its own (ONNX Runtime's threads spin after a run and would slow whatever ran next),
    in two passes, the second in reverse order, so drift hits all alike; the samples of both passes together."""
    samples = {name: [] for name in runners}
    half = max(1, repeats // 2)
    for order in (list(runners), list(reversed(runners))):
        for name in order:
            run = runners[name]
            for _ in range(warmup):
                run()
            for _ in range(half):
                start = time.perf_counter()
                run()
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: Timing.of(name, values) for name, values in samples.items()}


def gemm_floor(case, repeats: int) -> Timing:
    """Steps 2-5's S = V T~^T and step 10's G = Z Z^T with their row norms, in torch: what no selector can skip."""
    import torch

    from flashvlm_export.export.interface import PROJECTED_FEATURES, TEXT_EMBEDS, TEXT_MASK, VISION_FEATURES
    from flashvlm_export.selector.ops import l2norm

    x = torch.from_numpy(case.feeds[VISION_FEATURES][0])
    p = torch.from_numpy(case.feeds[PROJECTED_FEATURES][0])
    t = torch.from_numpy(case.feeds[TEXT_EMBEDS][0][case.feeds[TEXT_MASK][0]])

    def floor():
        z = l2norm(x)
        return l2norm(p) @ l2norm(t).T, z @ z.T

    with torch.inference_mode():
        return measure("floor: two GEMMs + norms (torch)", floor, warmup=3, repeats=repeats)


def range_cost(settings, scratch: Path, log=print) -> list[dict]:
    from flashvlm_export.bench.split import footprint
    from flashvlm_export.bench.suite import selector_case, with_prompt_len
    from flashvlm_export.export.graphs import ExportRequest, export_graph
    from flashvlm_export.models.adapter import get_parts
    from flashvlm_export.models.registry import get_spec
    from flashvlm_export.models.weights import WeightsSource
    from flashvlm_export.parity.backends import SelectorReference
    from flashvlm_export.parity.corpus import Geometry, pipeline_corpus
    from flashvlm_export.runtime.session import OrtGraph
    from flashvlm_export.selector.config import SelectorConfig

    spec = get_spec("llava15")
    base = ExportRequest(
        spec=spec, budget=RANGE[1], budget_min=RANGE[0], t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=True
    )
    start = time.perf_counter()
    ranged = export_graph(base, scratch / "selector_range.onnx", exporter="torchscript")
    fixed = {
        k: export_graph(replace(base, budget=k, budget_min=None), scratch / f"selector_b{k}.onnx", exporter="torchscript")
        for k in BUDGETS
    }
    parts = get_parts(spec, WeightsSource(seed=0))
    full_request = replace(base, budget=FULL_BUDGET, budget_min=None, selector_only=False)
    full = export_graph(full_request, scratch / "full.onnx", parts, parts.source.tag)
    del parts
    log(
        f"  exported the range selector {RANGE[0]}..{RANGE[1]}, {plural(len(BUDGETS), 'fixed selector')} and the full graph {time.perf_counter() - start:.0f}s"
    )

    case = selector_case(spec.n_tokens, settings.text_len)
    feeds = {**case.feeds}
    range_graph = OrtGraph(ranged, provider=CPU)
    runners = {}
    for k in BUDGETS:
        graph = OrtGraph(fixed[k], provider=CPU)
        budget_feeds = {**feeds, BUDGET: np.array([k], dtype=np.int64)}
        runners[f"fixed selector K={k}"] = lambda g=graph: g.infer(feeds)
        runners[f"range selector at K={k}"] = lambda f=budget_feeds: range_graph.infer(f)
    reference = SelectorReference(FULL_BUDGET, SelectorConfig(), verification=False)
    runners[f"eager reference K={FULL_BUDGET}"] = lambda: reference.infer(feeds)
    repeats = max(5, settings.repeats)
    timings = _in_blocks(runners, max(1, settings.warmup), repeats)
    floor = gemm_floor(case, repeats)
    pixels = with_prompt_len(
        pipeline_corpus(
            Geometry(spec.n_tokens, spec.vision_hidden, spec.text_hidden, spec.t_max, 1), spec.image_shape, repeats=1
        )[0],
        settings.text_len,
    )
    pipeline = OrtGraph(full, provider=CPU)
    full_time = measure(
        f"full graph K={FULL_BUDGET}", lambda g=pipeline: g.infer(pixels.feeds), warmup=1, repeats=max(3, settings.repeats // 2)
    )
    del pipeline

    log(HEADER)
    for timing in (*timings.values(), floor, full_time):
        log(timing.row())
    rows = []
    for k in BUDGETS:
        fixed_ms, range_ms = timings[f"fixed selector K={k}"].median_ms, timings[f"range selector at K={k}"].median_ms
        row = {
            "section": "range_time",
            "budget": k,
            "fixed": timings[f"fixed selector K={k}"].to_dict(),
            "range": timings[f"range selector at K={k}"].to_dict(),
            "range_over_fixed": range_ms / fixed_ms,
            "fixed_over_floor": fixed_ms / floor.median_ms,
            "range_over_floor": range_ms / floor.median_ms,
        }
        if k == FULL_BUDGET:
            row["range_share_of_full"] = range_ms / full_time.median_ms
            row["fixed_share_of_full"] = fixed_ms / full_time.median_ms
            row["eager_reference"] = timings[f"eager reference K={k}"].to_dict()
            row["full_graph"] = full_time.to_dict()
        rows.append(row)
        log(
            f"  K={k}: range / fixed {range_ms / fixed_ms:.2f}x; fixed / floor {fixed_ms / floor.median_ms:.2f}x, "
            f"range / floor {range_ms / floor.median_ms:.2f}x"
            + (f"; range = {100 * row['range_share_of_full']:.2f}% of the full graph" if k == FULL_BUDGET else "")
        )

    feeds_path = scratch / "feeds.npz"
    np.savez(feeds_path, **{**feeds, BUDGET: np.array([FULL_BUDGET], dtype=np.int64)})
    one = footprint("fused", [str(ranged)], [FULL_BUDGET], str(feeds_path))
    many = footprint("fused", [str(fixed[k]) for k in BUDGETS], list(BUDGETS), str(feeds_path))
    disk = {"range_bytes": ranged.stat().st_size, "per_budget_bytes": sum(fixed[k].stat().st_size for k in BUDGETS)}
    log(
        f"  disk: one range selector {disk['range_bytes'] / 1e6:.1f} MB against {plural(len(BUDGETS), 'fixed selector')} "
        f"{disk['per_budget_bytes'] / 1e6:.1f} MB; resident after one run: {one['resident_gib']:.2f} against {many['resident_gib']:.2f} GiB "
        f"(peak {one['peak_rss_gib']:.2f} against {many['peak_rss_gib']:.2f} GiB)"
    )
    rows.append({"section": "range_footprint", **disk, "range_memory": one, "per_budget_memory": many, "budgets": list(BUDGETS)})
    rows.append({"section": "floor", **floor.to_dict()})
    return rows


def write_rows(rows: list[dict], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench-range.json"
    with atomic_outputs([path]) as (temp,):  # only the tool's own earlier rows are replaced
        temp.write_text(json.dumps(rows, indent=2) + "\n")
    note_written([path])  # a list carries no stamp: the folder's ledger lists it
    return path
