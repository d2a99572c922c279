"""flashvlm-export run: a photo (or a clip) and a question through an exported graph (runtime/api.py does it)."""

from __future__ import annotations

import argparse

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, add_backend_flag, log
from flashvlm_export.export.options import LLM_DTYPE_NAMES


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} run",
        description=(
            "A photo (or with --video, a clip) and a question through an exported graph: the kept tokens and the selection time, "
            "optionally a heatmap of them and the LLM's answer with the K kept tokens (and with all N)."
        ),
    )
    s = p.add_argument_group("selection")
    s.add_argument("--graph", metavar="PATH", help="full graph from flashvlm-export; its metadata names the model and weights")
    s.add_argument(
        "--engine",
        metavar="PLAN",
        help="run this TensorRT engine instead (its sidecar records the graph's metadata); needs TensorRT and a GPU",
    )
    s.add_argument(
        "--manifest",
        metavar="JSON",
        help="a split export's manifest: its encoder, then the selector of --budget (no host copy in between)",
    )
    s.add_argument(
        "--budget",
        type=int,
        metavar="K",
        help="K this request keeps: one of a --manifest's budgets, or any in a budget-range graph's or split's range",
    )
    s.add_argument("--tensorrt", action="store_true", help="with --manifest: run its TensorRT engines (needs TensorRT and a GPU)")
    s.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so for an engine built with --plugin")
    add_backend_flag(s, "--graph or --manifest's graphs")
    i = p.add_argument_group("input")
    i.add_argument("--image", metavar="FILE", help="any picture Pillow reads")
    i.add_argument(
        "--demo-image", metavar="FILE", help="write a synthetic picture (the repository's demo) to FILE and use it as --image"
    )
    i.add_argument(
        "--video",
        metavar="FILE",
        help="a clip (mp4, mkv, avi, ...) for a clip graph (exported with --video): F frames sampled evenly",
    )
    i.add_argument(
        "--demo-video",
        metavar="FILE",
        help="write the synthetic clip (a ball rolling, a box appearing) at the graph's frames and size to FILE (.mp4, .mkv, .avi) and use it as --video",
    )
    i.add_argument(
        "--fps", type=float, metavar="F", help="with --video: the frames shown at 0, 1/F, 2/F, ... s instead of evenly spread"
    )
    i.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="refuse an --image of more than N pixels before decoding it (default: Pillow's decompression-bomb limit, "
        "PIL.Image.MAX_IMAGE_PIXELS); raise it for a larger picture you trust",
    )
    i.add_argument("--question", required=True, help="the question about the image or clip")
    w = p.add_argument_group("weights (default: the ones the graph records)")
    w.add_argument("--model-path", metavar="DIR", help="local checkpoint the graph was exported from")
    w.add_argument(
        "--random-weights", action="store_true", help="the graph's seeded random weights (stand-in tokenizer; answers are noise)"
    )
    w.add_argument("--seed", type=int, help="seed of --random-weights; must be the graph's (default: the graph's)")
    o = p.add_argument_group("output")
    o.add_argument(
        "--heatmap",
        metavar="PNG",
        help="write the kept tokens over the image beside S_int, s (text relevance), S_ext and F; for a clip, a strip of its frame groups",
    )
    o.add_argument("--answer", action="store_true", help="answer with the LLM from the K kept visual tokens")
    o.add_argument(
        "--compare-full", action="store_true", help="also answer with all N tokens: both answers, prefill times, KV caches"
    )
    o.add_argument("--max-new-tokens", type=int, default=64, help="greedy answer length at most (default: 64)")
    o.add_argument(
        "--llm-dtype",
        choices=LLM_DTYPE_NAMES,
        default=LLM_DTYPE_NAMES[0],
        help="the dtype the LLM answers in, with --answer or --compare-full (default: auto)",
    )
    o.add_argument(
        "--llm-runtime",
        choices=["transformers", "llama.cpp"],
        default="transformers",
        help="where the LLM answers: transformers (default), or llama.cpp with --gguf (needs the llama extra)",
    )
    o.add_argument(
        "--gguf",
        metavar="FILE",
        help="with --llm-runtime llama.cpp: the LLM as GGUF (flashvlm-export gguf writes a test model's)",
    )
    o.add_argument("--force", action="store_true", help="overwrite an existing --heatmap, --demo-image or --demo-video")
    return p


def main(argv: list[str]) -> int:
    from flashvlm_export.runtime.api import run

    args = parser().parse_args(argv)
    run(
        args.graph,
        args.image,
        args.question,
        demo_image=args.demo_image,
        model_path=args.model_path,
        random_weights=args.random_weights,
        seed=args.seed,
        engine=args.engine,
        plugin_lib=args.plugin_lib,
        manifest=args.manifest,
        budget=args.budget,
        tensorrt=args.tensorrt,
        backend=args.backend,
        heatmap=args.heatmap,
        answer=args.answer,
        compare_full=args.compare_full,
        max_new_tokens=args.max_new_tokens,
        llm_dtype=args.llm_dtype,
        llm_runtime=args.llm_runtime,
        gguf=args.gguf,
        force=args.force,
        log=log,
        video=args.video,
        demo_video=args.demo_video,
        fps=args.fps,
        max_image_pixels=args.max_image_pixels,
    )
    return 0
