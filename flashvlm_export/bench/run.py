"""`flashvlm-export bench` assembled: which sections run, in what order, into one results record."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from flashvlm_export.bench import report, suite
from flashvlm_export.errors import UsageError

# measured on a quiet 2-core x86-64 CPU (README, Performance): what a full run costs, for the opening estimate; under load
# (2026-12-06) exports took 3-9x as long, so the estimate says so
ESTIMATE_S = {"export": 45, "selector": 110, "full_graph": 15, "split": 400}
MAX_BENCH_REPEATS = 1000  # ~20 min of N=2880 timings on 2 cores; more measures nothing new


def check_repeats(repeats: int) -> int:
    if not 1 <= repeats <= MAX_BENCH_REPEATS:
        raise UsageError(f"--repeats {repeats} is out of range; use 1 <= repeats <= {MAX_BENCH_REPEATS}")
    return repeats


def bench_settings(
    repeats: int,
    text_len: int,
    *,
    export: bool = True,
    full_graph: bool = True,
    gpu: bool = True,
    split: bool = True,
    split_only: bool = False,
) -> suite.BenchSettings:
    """The sections to run, every value checked; `split_only` runs fused graphs against a split export alone."""
    from flashvlm_export.models.zoo.llava15 import LLAVA15

    check_repeats(repeats)
    if not 0 <= text_len <= LLAVA15.t_max:
        raise UsageError(f"--text-len {text_len} is out of range; use 0 <= text-len <= {LLAVA15.t_max} (T_max)")
    if split_only and not split:
        raise UsageError("--split-only and --no-split exclude each other; pass one")
    return suite.BenchSettings(
        repeats,
        2,
        text_len,
        full_graph=full_graph and not split_only,
        export=export and not split_only,
        gpu=gpu and not split_only,
        split=split,
        selector=not split_only,
    )


def estimate_text(settings: suite.BenchSettings) -> str:
    parts = {"selector": ESTIMATE_S["selector"] * settings.repeats / 10} if settings.selector else {}
    if settings.split:
        parts["split"] = ESTIMATE_S["split"] * (0.8 + 0.2 * settings.repeats / 10)
    if settings.export and settings.selector:
        parts["export"] = ESTIMATE_S["export"]
        if settings.full_graph:
            parts["full_graph"] = ESTIMATE_S["full_graph"] * settings.repeats / 10
    total = sum(parts.values())
    detail = ", ".join(f"{name} ~{seconds:.0f} s" for name, seconds in parts.items())
    return f"about {total / 60:.0f} min on 2 quiet CPU cores ({detail}); several times that when loaded, less on more"


def run_bench(settings: suite.BenchSettings, out_dir: Path, command: str, log=print) -> tuple[Path, Path]:
    """Every section the settings ask for; results saved as bench.json and bench.md in out_dir."""
    import torch

    results = {"machine": suite.machine(), "settings": settings.__dict__, "command": command, "rows": []}
    log(f"Bench: {estimate_text(settings)}")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flashvlm-bench-") as scratch:
        graph = Path(scratch) / "full_graph.onnx"
        if settings.export:
            log("Bench: export (child process)")
            results["rows"].append(suite.export_cost(graph, log=log))
        if settings.selector:
            log(f"Bench: selector core ({time.perf_counter() - start:.0f}s so far)")
            core = suite.selector_core(settings, log=log)
            results["rows"] += core.rows
            if settings.export and settings.full_graph and core.full_graph_point_ms is not None:
                log(f"Bench: full graph ({time.perf_counter() - start:.0f}s so far)")
                results["rows"].append(suite.full_graph(graph, core.full_graph_point_ms, settings, log=log))
            graph.unlink(missing_ok=True)
        if settings.split:
            from flashvlm_export.bench.split import split_cost

            log(f"Bench: fused graphs against a split export ({time.perf_counter() - start:.0f}s so far)")
            folder = Path(scratch) / "split"
            folder.mkdir()
            results["rows"] += split_cost(settings, folder, log=log)
    if settings.gpu and torch.cuda.is_available():
        log("Bench: LLM prefill on the GPU")
        results["rows"] += suite.prefill_gpu(settings, text_len=settings.text_len, log=log)
    json_path, md_path = report.save(results, out_dir)
    log(report.markdown(results))
    log(f"Bench: done {time.perf_counter() - start:.0f}s, saved {json_path} and {md_path}")
    return json_path, md_path
