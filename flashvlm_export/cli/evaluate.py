"""flashvlm-export eval: a local benchmark through an exported artifact at each budget (evaluation/job.py does it)."""

from __future__ import annotations

import argparse

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, add_backend_flag, log
from flashvlm_export.export.options import LLM_DTYPE_NAMES


def parser() -> argparse.ArgumentParser:
    from flashvlm_export.evaluation.job import DEFAULT_OUT
    from flashvlm_export.evaluation.questions import LAYOUTS

    p = Parser(
        prog=f"{PROG} eval",
        description=(
            "Answer quality against the budget: every question of a local benchmark (MMStar, MMBench, POPE, GQA, TextVQA "
            "layouts) through an exported graph or split and the LLM, at each budget and at K = N, scored by the benchmark's "
            "own rule. Writes results as they come (--resume goes on after Ctrl-C), then a table and a plot. docs/EVAL.md"
        ),
    )
    a = p.add_argument_group("artifact")
    a.add_argument(
        "--manifest", metavar="JSON", help="a split export's manifest: the encoder once per picture, then each budget's selector"
    )
    a.add_argument("--graph", metavar="PATH", help="a full graph (fixed K, or a budget-range graph: any K in its range)")
    a.add_argument(
        "--budgets",
        metavar="LIST",
        help="comma list of K and 'full' (K = N), e.g. 32,64,128,full (default: every budget a split or graph has, a range's two ends, and full)",
    )
    a.add_argument("--tensorrt", action="store_true", help="with --manifest: its TensorRT engines (needs TensorRT and a GPU)")
    a.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so for engines built with --plugin")
    add_backend_flag(a, "--graph or --manifest's graphs")
    d = p.add_argument_group("benchmark")
    d.add_argument(
        "--data",
        metavar="PATH",
        help="the benchmark: a parquet/JSONL/JSON/TSV/Arrow file, a folder of them (pictures beside), or a Hugging Face "
        "dataset id in the local cache (Lin-Chen/MMStar); never downloaded",
    )
    d.add_argument(
        "--layout",
        default="auto",
        choices=("auto", *LAYOUTS),
        help="the benchmark's layout and rule (default: auto, from its columns)",
    )
    d.add_argument("--data-split", metavar="NAME", help="which split when the data holds several (en/dev, test, ...)")
    d.add_argument("--images", metavar="DIR", help="the folder of the pictures the data names by file or id (COCO val2014, ...)")
    d.add_argument("--limit", type=int, metavar="N", help="the first N questions only")
    d.add_argument(
        "--max-image-pixels",
        type=int,
        metavar="N",
        help="refuse a picture of more than N pixels (default: Pillow's decompression-bomb limit); raise it for pictures you trust",
    )
    d.add_argument(
        "--demo-data",
        metavar="DIR",
        help="write a small SYNTHETIC benchmark in each layout to DIR (for trying eval and for CI: its accuracy says nothing)",
    )
    w = p.add_argument_group("weights (default: the ones the artifact records)")
    w.add_argument("--model-path", metavar="DIR", help="local checkpoint the artifact was exported from (its tokenizer and LLM)")
    w.add_argument("--random-weights", action="store_true", help="the artifact's seeded random weights (accuracy is meaningless)")
    w.add_argument("--seed", type=int, help="seed of --random-weights; must be the artifact's")
    o = p.add_argument_group("answers and output")
    o.add_argument(
        "--llm-runtime",
        choices=["transformers", "llama.cpp"],
        default="transformers",
        help="where the LLM answers (default: transformers)",
    )
    o.add_argument("--gguf", metavar="FILE", help="with --llm-runtime llama.cpp: the LLM as GGUF")
    o.add_argument(
        "--llm-dtype", choices=LLM_DTYPE_NAMES, default=LLM_DTYPE_NAMES[0], help="transformers LLM dtype (default: auto)"
    )
    o.add_argument(
        "--llm-layers",
        type=int,
        metavar="N",
        help="with --random-weights: the transformers LLM cut to its first N decoder layers (to time a full-size geometry)",
    )
    o.add_argument(
        "--max-new-tokens", type=int, help="greedy answer length at most (default: 16: a letter, yes/no or a short phrase)"
    )
    o.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help=f"results.jsonl, table.md, table.json, accuracy.png (default: {DEFAULT_OUT})",
    )
    o.add_argument(
        "--resume", action="store_true", help="go on with the results in --out of the same run, answering only the questions left"
    )
    o.add_argument("--force", action="store_true", help="start over, replacing the results in --out (or the --demo-data folder)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.demo_data is not None:
        from flashvlm_export.errors import UsageError

        given = [f for f in ("manifest", "graph", "data") if getattr(args, f) is not None]
        if given:
            raise UsageError(
                f"--demo-data only writes the synthetic benchmark; run eval on it with --data next (drop --{given[0]})"
            )
        from flashvlm_export.evaluation.demo_data import write_demo_data

        write_demo_data(args.demo_data, force=args.force, log=log)
        return 0
    from flashvlm_export.evaluation.job import evaluate

    evaluate(
        args.data, manifest=args.manifest, graph=args.graph, budgets=args.budgets, layout=args.layout, data_split=args.data_split,
        images=args.images, limit=args.limit, out=args.out, resume=args.resume, force=args.force, model_path=args.model_path,
        random_weights=args.random_weights, seed=args.seed, backend=args.backend, tensorrt=args.tensorrt,
        plugin_lib=args.plugin_lib, llm_runtime=args.llm_runtime, gguf=args.gguf, llm_dtype=args.llm_dtype,
        max_new_tokens=args.max_new_tokens, llm_layers=args.llm_layers, max_image_pixels=args.max_image_pixels, log=log,
    )  # fmt: skip
    return 0
