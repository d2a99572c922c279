"""flashvlm-export bench: measured costs on this machine (bench/run.py does it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, log
from flashvlm_export.models.zoo.llava15 import LLAVA15


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} bench",
        description=(
            "Measure what the selector costs and what pruning saves on this machine: selector core on every backend, "
            "the full graph in ONNX Runtime, the export, and (on a GPU) LLM prefill per budget. Writes bench.json and bench.md."
        ),
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure after warm-up, 1-1000 (default: 10)")
    p.add_argument(
        "--text-len",
        type=int,
        default=60,
        help=f"prompt rows of the {LLAVA15.t_max} (default: 60, a LLaVA-1.5 chat prompt)",
    )
    p.add_argument("--out-dir", default="bench-results", help="where bench.json and bench.md go (default: bench-results)")
    p.add_argument("--no-export", action="store_true", help="skip the export measurement (and the full graph, which uses it)")
    p.add_argument("--no-full-graph", action="store_true", help="skip the full-graph ONNX Runtime timing")
    p.add_argument("--no-gpu", action="store_true", help="ignore a CUDA GPU even when present")
    p.add_argument("--no-split", action="store_true", help="skip fused graphs against a split export (time, disk, memory)")
    p.add_argument(
        "--split-only", action="store_true", help="only fused graphs against a split export (~7 min, ~8 GB of scratch disk)"
    )
    p.add_argument("--cost-only", action="store_true", help="print the FLOPs / KV-cache calculator and stop")
    p.add_argument(
        "--range",
        action="store_true",
        help="only this: one budget-range selector (16..256) against a selector per budget at K = 32, 128, 192, the full "
        "graph and the GEMM floor, llava15 N=576, ONNX Runtime CPU (~3 min); writes bench-range.json",
    )
    p.add_argument(
        "--manifest",
        metavar="PATH",
        help="only this: a split export's encoder and each selector timed (ONNX Runtime CPU, or each --backend), and the "
        "selector's share (any model; export one with --budget K1,K2 first)",
    )
    p.add_argument(
        "--backend",
        metavar="LIST",
        help="with --manifest: the runtimes to time it in, one after the other, with their start times: onnxruntime, "
        "openvino, or onnxruntime,openvino (default: onnxruntime)",
    )
    return p


def backend_list(text: str | None, manifest: str | None) -> tuple[str, ...]:
    """--backend's runtimes, each once; one line for an unknown one, or for --backend without --manifest."""
    from flashvlm_export.backend import GRAPH_BACKENDS, ONNXRUNTIME_BACKEND
    from flashvlm_export.errors import UsageError

    if text is None:
        return (ONNXRUNTIME_BACKEND,)
    if manifest is None:
        raise UsageError(f"--backend {text} times a split export's chain; pass --manifest PATH, or drop --backend")
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    bad = [name for name in names if name not in GRAPH_BACKENDS]
    if bad:
        raise UsageError(
            f"--backend {text}: {bad[0]!r} is not a graph runtime; use {', '.join(GRAPH_BACKENDS)} or both, comma-separated"
        )
    return names


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    backends = backend_list(args.backend, args.manifest)
    if args.manifest:
        from flashvlm_export.bench.run import check_repeats
        from flashvlm_export.bench.share import selector_share

        selector_share(Path(args.manifest), warmup=2, repeats=check_repeats(args.repeats), log=log, backends=backends)
        return 0
    if args.range:
        import tempfile

        from flashvlm_export.artifacts.staging import check_writable
        from flashvlm_export.bench.ranged import range_cost, write_rows
        from flashvlm_export.bench.run import bench_settings

        settings = bench_settings(
            args.repeats, args.text_len, export=False, full_graph=True, gpu=False, split=False, split_only=False
        )
        out_dir = Path(args.out_dir)
        check_writable([out_dir / "bench-range.json"], force=True, log=log, flag="--out-dir")
        with tempfile.TemporaryDirectory(prefix="flashvlm-bench-range-") as scratch:
            rows = range_cost(settings, Path(scratch), log=log)
        log(f"Bench: wrote {write_rows(rows, out_dir)}")
        return 0
    if args.cost_only:
        from flashvlm_export.bench.cost import VIDEO_MODELS, cost_markdown, differences_text, linear_attention_text

        log(cost_markdown())
        log(linear_attention_text())
        log(differences_text())
        log("\nVideo (Qwen2.5-VL-7B, 448 px frames; frames 2g, 2g+1 form one group of 256 tokens):")
        log(cost_markdown(VIDEO_MODELS))
        return 0
    from flashvlm_export.artifacts.staging import check_writable
    from flashvlm_export.bench.run import bench_settings, run_bench

    settings = bench_settings(
        args.repeats,
        args.text_len,
        export=not args.no_export,
        full_graph=not args.no_full_graph,
        gpu=not args.no_gpu,
        split=not args.no_split,
        split_only=args.split_only,
    )
    out_dir = Path(args.out_dir)
    check_writable(
        [out_dir / "bench.json", out_dir / "bench.md"], force=True, log=log, flag="--out-dir"
    )  # before minutes of work
    run_bench(settings, out_dir, f"{PROG} bench " + " ".join(argv), log=log)
    return 0
