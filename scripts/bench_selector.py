#!/usr/bin/env python3
"""Selector-core latency on this machine: eager reference vs static torch vs ONNX Runtime (CPU).

    python scripts/bench_selector.py [--n-tokens 576] [--budget 128] [--repeats 20]

Same inputs for every backend (a corpus "scene" at llava15 geometry, batch 1). Prints a table.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from pathlib import Path

import torch

from flashvlm_export.bench.suite import cpu_selector_timings, selector_case
from flashvlm_export.bench.timing import HEADER
from flashvlm_export.export.graphs import ExportRequest, export_graph
from flashvlm_export.models.registry import get_spec
from flashvlm_export.selector.config import SelectorConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-tokens", type=int, default=576, help="visual tokens N (default: 576)")
    p.add_argument("--budget", type=int, default=128, help="budget K (default: 128)")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats per backend (default: 20)")
    p.add_argument(
        "--text-len", type=int, default=60, help="unmasked prompt rows L of T_max=128 (default: 60, a LLaVA-1.5 chat prompt)"
    )
    args = p.parse_args()
    spec = get_spec("llava15")
    request = ExportRequest(
        spec=spec,
        budget=args.budget,
        t_max=spec.t_max,
        batch=1,
        config=SelectorConfig(),
        selector_only=True,
        n_tokens=None if args.n_tokens == spec.n_tokens else args.n_tokens,
    )
    case = selector_case(args.n_tokens, args.text_len)
    with tempfile.TemporaryDirectory() as scratch:
        graph = export_graph(request, Path(scratch) / "selector.onnx")
        print(
            f"selector core N={args.n_tokens} K={args.budget} B=1 L={args.text_len}, torch threads {torch.get_num_threads()}, "
            f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        )
        print(HEADER)
        for timing in cpu_selector_timings(request, case, graph, warmup=3, repeats=args.repeats):
            print(timing.row(), flush=True)


if __name__ == "__main__":
    main()
