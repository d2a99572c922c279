"""flashvlm-export gguf: a GGUF of a model's LLM for llama.cpp (llm/gguf_file.py writes it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, log


def parser() -> argparse.ArgumentParser:
    from flashvlm_export.models.registry import MODELS, model_name

    p = Parser(
        prog=f"{PROG} gguf",
        description=(
            "Write a GGUF of a model's LLM for llama.cpp (run --answer --llm-runtime llama.cpp --gguf): a test-size model's own "
            "random LLM (the weights its random-weight graphs record), or a full-size geometry cut to --layers with "
            "seeded weights, for timing. A real checkpoint's LLM is converted with llama.cpp's convert_hf_to_gguf.py."
        ),
    )
    p.add_argument("--model", required=True, type=model_name, metavar="NAME", help=f"one of {', '.join(MODELS)} (any case)")
    p.add_argument("--out", required=True, metavar="FILE.gguf", help="where to write it")
    p.add_argument("--seed", type=int, default=0, help="the random weights' seed (a test-size model: the graph's; default 0)")
    p.add_argument("--layers", type=int, metavar="N", help="full-size models only: keep N decoder layers (timing weights)")
    p.add_argument("--dtype", choices=["f32", "f16", "q8_0"], help="2-D weights (default: f32 test-size, f16 full-size)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    return p


def main(argv: list[str]) -> int:
    from flashvlm_export.llm.gguf_file import write_model_gguf
    from flashvlm_export.models.registry import get_spec

    args = parser().parse_args(argv)
    spec = get_spec(args.model)
    write_model_gguf(spec, Path(args.out), args.seed, args.layers, args.dtype, args.force, log=log)
    return 0
