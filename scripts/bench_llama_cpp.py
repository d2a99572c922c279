"""Prefill time in llama.cpp at several visual-token budgets: the same GGUF, the same run, the budgets interleaved.

    python scripts/bench_llama_cpp.py --model llava15 --gguf llava15-L4-f16.gguf --tokens 576,128,64,32
    python scripts/bench_llama_cpp.py --model qwen2.5-vl-7b --gguf qwen7b-L4-f16.gguf --tokens 256,64

The prompt is `--prompt` text tokens (35 before the image, the rest after, like LLaVA-1.5's system prompt and
question) and K rows of embeddings at the budget's kept positions (a seeded sorted subset; Qwen: their (t, h, w)),
decoded exactly as `run --llm-runtime llama.cpp` does (runtime/llama_cpp.py: three batches, logits of the last row).
Each repeat times every budget once, in turn, so that load from other processes falls on all of them; the table
gives the median and the spread (min..max) and the FLOP model's ratio (bench/cost.py) for the same layers and
tokens. Writes a markdown table to stdout; the load average (os.getloadavg) before and after.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

import numpy as np
import torch

from flashvlm_export.bench.cost import prefill_flops
from flashvlm_export.models.positions import token_positions
from flashvlm_export.models.registry import get_spec
from flashvlm_export.runtime.llama_cpp import LlamaCppLLM, llama_cpp_prompt, read_gguf

BEFORE = 35  # text tokens before the image


def prompt_for(spec, k: int, text: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = [int(x) for x in rng.integers(3, 259, text)]  # byte tokens of the stand-in vocabulary
    ids = ids[:BEFORE] + [spec.image_token_index] + ids[BEFORE:]
    kept = np.sort(rng.choice(spec.n_tokens, k, replace=False)) if k < spec.n_tokens else np.arange(k)
    rows = torch.from_numpy(rng.standard_normal((k, spec.text_hidden), dtype=np.float32) * 0.02)
    positions = token_positions(spec)[torch.from_numpy(kept)] if spec.has_positions else None
    return llama_cpp_prompt(ids, spec, rows, positions)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="the spec whose geometry the GGUF has (llava15, qwen2.5-vl-7b)")
    p.add_argument("--gguf", required=True)
    p.add_argument("--tokens", default="576,128,64,32", help="visual-token budgets, the first is the reference")
    p.add_argument("--prompt", type=int, default=60, help="text tokens of the prompt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()

    spec = get_spec(args.model)
    info = read_gguf(args.gguf)
    budgets = [int(x) for x in args.tokens.split(",")]
    prompts = {k: prompt_for(spec, k, args.prompt) for k in budgets}
    load_before = os.getloadavg()
    with LlamaCppLLM(info, n_ctx=max(q.length for q in prompts.values()) + 8, threads=args.threads) as llm:
        layers = llm.lib.llama_model_n_layer(llm.model)
        for prompt in prompts.values():  # warm-up: page the weights in, size the buffers
            llm.prefill(prompt)
        times = {k: [] for k in budgets}
        for _ in range(args.repeats):
            for k, prompt in prompts.items():
                start = time.perf_counter()
                llm.prefill(prompt)
                times[k].append(time.perf_counter() - start)
        threads = llm.threads
    load_after = os.getloadavg()
    geometry = dataclasses.replace(spec.decoder, layers=layers)
    ref_k = budgets[0]
    ref_ms = statistics.median(times[ref_k]) * 1e3
    ref_flops = prefill_flops(geometry, ref_k + args.prompt)
    print(
        f"{spec.decoder.name} geometry, {layers} layers, {info.path.name}; {platform.processor() or platform.machine()}, "
        f"{threads} threads; load average {load_before[0]:.2f} before, {load_after[0]:.2f} after; "
        f"{args.repeats} repeats; {time.strftime('%Y-%m-%d')}"
    )
    print("| visual tokens | prompt tokens | prefill ms, median (min..max) | vs full, measured | vs full, FLOP model |")
    print("|---|---|---|---|---|")
    for k in budgets:
        ms = [t * 1e3 for t in times[k]]
        med = statistics.median(ms)
        flops = prefill_flops(geometry, k + args.prompt) / ref_flops
        print(f"| {k} | {prompts[k].length} | {med:.0f} ({min(ms):.0f}..{max(ms):.0f}) | {med / ref_ms:.3f} | {flops:.3f} |")


if __name__ == "__main__":
    main()
