"""Fused graphs against a split export, measured in one run on the same inputs (ONNX Runtime CPU).

- Time: the fused full graph at K against the split chain (encoder -> selector of K, I/O-bound),
  interleaved run by run so that drift hits both alike; the chain's overhead is (chain / fused - 1).
- Disk: the files each layout needs to serve 1, 3 and 5 budgets.
- Memory: a fresh process per point loads every session those budgets need and runs each once; its
  resident set afterwards (what a device serving them holds) and its peak RSS (loading a graph costs
  ONNX Runtime a transient several times the graph's size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from flashvlm_export.backend import CPU, Backend
from flashvlm_export.bench.timing import Timing
from flashvlm_export.errors import BuildError
from flashvlm_export.progress import plural

SPLIT_BUDGETS = (128, 64, 32, 192, 96)  # the first 1, 3 and 5 of them are measured
BUDGET_COUNTS = (1, 3, 5)


def interleaved(fused: Backend, chain, feeds, budget: int, warmup: int, repeats: int) -> tuple[Timing, Timing]:
    """Fused graph and chain, alternating run by run on the same feeds; medians with p10/p90."""
    for _ in range(warmup):
        fused.infer(feeds)
        chain.infer(feeds, budget)
    a, b = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        fused.infer(feeds)
        a.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        chain.infer(feeds, budget)
        b.append((time.perf_counter() - start) * 1e3)
    return Timing.of(f"fused graph K={budget}", a), Timing.of(f"split chain K={budget}", b)


def footprint(layout: str, files: list[str], budgets: list[int], feeds_path: str) -> dict:
    """Peak RSS of a child that loads the sessions for `budgets` and runs each once."""
    command = [sys.executable, "-m", "flashvlm_export.bench.split", layout, feeds_path, json.dumps(budgets), *files]
    run = subprocess.run(command, capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no output"]
        raise BuildError(f"bench: the {layout} memory child failed (exit {run.returncode}): {tail[0]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _child(layout: str, feeds_path: str, budgets: list[int], files: list[str]) -> None:
    """In a fresh process: load what `layout` needs for `budgets`, run each budget once, print the peak RSS."""
    feeds = dict(np.load(feeds_path))
    if layout == "fused":
        from flashvlm_export.runtime.session import OrtGraph

        graphs = [OrtGraph(Path(f), provider=CPU) for f in files]
        for graph in graphs:
            graph.infer(feeds)
    else:
        from flashvlm_export.export.manifest import read_manifest
        from flashvlm_export.runtime.chain import OrtChain

        chain = OrtChain(read_manifest(Path(files[0]), verify=False), CPU)
        for k in budgets:
            chain.infer(feeds, k)
    # VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork and execve, so a child would report the
    # parent's peak when that is higher (getrusage(2)); VmHWM belongs to the child's own address space.
    status = {
        line.split(":")[0]: line.split()[1]
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("Vm")
    }
    peak, resident = int(status["VmHWM"]) / (1 << 20), int(status["VmRSS"]) / (1 << 20)  # KiB
    print(json.dumps({"peak_rss_gib": round(peak, 2), "resident_gib": round(resident, 2)}))


def split_cost(settings, scratch: Path, log=print) -> list[dict]:
    """Fused against split for llava15 (full size, seeded random weights): time, disk, memory."""
    from dataclasses import replace

    from flashvlm_export.bench.suite import with_prompt_len
    from flashvlm_export.export.graphs import ExportRequest, export_graph
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.export.options import DEFAULT_OPSET
    from flashvlm_export.export.split import export_split, split_plan
    from flashvlm_export.models.llava import random_parts
    from flashvlm_export.models.registry import get_spec
    from flashvlm_export.parity.corpus import Geometry, pipeline_corpus
    from flashvlm_export.runtime.chain import OrtChain
    from flashvlm_export.runtime.session import OrtGraph
    from flashvlm_export.selector.config import SelectorConfig

    spec = get_spec("llava15")
    parts = random_parts(spec, 0)
    base = ExportRequest(
        spec=spec, budget=SPLIT_BUDGETS[0], t_max=spec.t_max, batch=1, config=SelectorConfig(), selector_only=False
    )
    requests = [replace(base, budget=k) for k in SPLIT_BUDGETS]
    start = time.perf_counter()
    fused = {}
    for request in requests:  # dynamo, as the product exports them (TorchScript's CLIP embeddings have data-dependent shapes)
        fused[request.budget] = export_graph(request, scratch / f"fused_b{request.budget}.onnx", parts)
    plan = split_plan(requests, scratch)  # selectors with TorchScript: the same graph in seconds (README)
    manifest_path = export_split(
        plan,
        parts,
        parts.source.tag,
        DEFAULT_OPSET,
        "dynamo",
        overwrite=False,
        log=lambda _: None,
        selector_exporter="torchscript",
    )
    del parts
    log(
        f"  exported {plural(len(requests), 'fused graph')} and one split (encoder + {plural(len(requests), 'selector')}) {time.perf_counter() - start:.0f}s"
    )
    manifest = read_manifest(manifest_path, verify=False)
    case = pipeline_corpus(
        Geometry(spec.n_tokens, spec.vision_hidden, spec.text_hidden, spec.t_max, 1), spec.image_shape, repeats=1
    )[0]
    feeds = with_prompt_len(case, settings.text_len).feeds
    k = SPLIT_BUDGETS[0]
    fused_runtime, chain = OrtGraph(fused[k], provider=CPU), OrtChain(manifest, CPU)
    repeats = max(3, settings.repeats)
    fused_time, chain_time = interleaved(fused_runtime, chain, feeds, k, max(1, settings.warmup), repeats)
    del fused_runtime, chain
    overhead = chain_time.median_ms / fused_time.median_ms - 1
    log(f"  {fused_time.row()}\n  {chain_time.row()}\n  chain overhead {100 * overhead:+.2f}% of the fused graph")
    rows = [
        {
            "section": "split_time",
            "budget": k,
            "fused": fused_time.to_dict(),
            "chain": chain_time.to_dict(),
            "overhead": overhead,
        }
    ]
    feeds_path = scratch / "feeds.npz"
    np.savez(feeds_path, **feeds)
    sizes = {p: p.stat().st_size for p in scratch.rglob("*.onnx")}
    for count in BUDGET_COUNTS:
        budgets = list(SPLIT_BUDGETS[:count])
        fused_files = [fused[b] for b in budgets]
        split_files = [manifest.encoder_graph] + [manifest.selector_graph(b) for b in budgets]
        row = {"section": "split_footprint", "budgets": budgets}
        row["fused_disk_bytes"] = sum(sizes[p] for p in fused_files)
        row["split_disk_bytes"] = sum(sizes[p] for p in split_files)
        for layout, files in (("fused", fused_files), ("split", [_subset_manifest(manifest, budgets)])):
            memory = footprint(layout, [str(p) for p in files], budgets, str(feeds_path))
            row[f"{layout}_peak_rss_gib"], row[f"{layout}_resident_gib"] = memory["peak_rss_gib"], memory["resident_gib"]
        rows.append(row)
        log(
            f"  {count} budget(s): disk fused {row['fused_disk_bytes'] / 1e9:.2f} GB, split {row['split_disk_bytes'] / 1e9:.2f} GB; "
            f"resident fused {row['fused_resident_gib']} GiB, split {row['split_resident_gib']} GiB; "
            f"peak RSS fused {row['fused_peak_rss_gib']} GiB, split {row['split_peak_rss_gib']} GiB"
        )
    return rows


def _subset_manifest(manifest, budgets: list[int]) -> Path:
    """A copy of the manifest that lists only `budgets` (same files), for the memory child."""
    from flashvlm_export.export.manifest import write_manifest

    record = json.loads(json.dumps(manifest.record))
    record["budgets"] = budgets
    record["selectors"] = [s for s in record["selectors"] if s["budget"] in budgets]
    path = manifest.folder / f"manifest_{len(budgets)}.json"
    write_manifest(path, record)
    return path


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4:])
