#!/usr/bin/env python3
"""Run the ResidualPrune plugin on a GPU the way TensorRT does, and check it against the reference.

    python scripts/plugin_harness.py [--tensorrt-include DIR] [--build-dir build/plugin] [--repeats 2]

1. builds libflashvlm_plugins.so and flashvlm_plugin_harness (CMake), unless already built;
2. for every parity-corpus image (N=576 at K=32/64/128/192, N=2880 at K=640) takes the reference's
   own Gram matrix and residual list, and runs the harness: getCreators -> createPlugin from a
   PluginFieldCollection -> serialise -> re-create -> enqueue on CUDA buffers;
3. requires the kept indices to equal the reference loop's, token for token and in order, and a
   planted token id outside [0, N) to come back as -1 in every kept slot of its image only;
4. times the kernel (CUDA events) against the unrolled static pruning stage in torch on the same GPU
   (eager and CUDA-graph replay), and prints both. Needs a CUDA GPU; TensorRT itself is not needed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.bench.timing import measure
from flashvlm_export.export.interface import SELECTOR_INPUTS
from flashvlm_export.parity.corpus import Geometry, selector_corpus
from flashvlm_export.plugin.build import build_plugin
from flashvlm_export.selector import SelectorConfig, round_schedule
from flashvlm_export.selector.reference import pruning_inputs, residual_prune
from flashvlm_export.selector.static import UnrolledResidualPrune

CASES = [(576, 32), (576, 64), (576, 128), (576, 192), (2880, 640)]


def reference_inputs(case, budget, config=SelectorConfig()):
    f = [torch.from_numpy(case.feeds[name]) for name in SELECTOR_INPUTS]
    gram, residual = pruning_inputs(*f, budget, config)
    return gram, residual, round_schedule(f[0].shape[1], budget, config)


def run_harness(harness, library, gram, residual, schedule, out_dir, iters):
    batch, n, _ = gram.shape
    files = [out_dir / name for name in ("gram.f32", "residual.i32", "kept.i32")]
    gram.numpy().astype(np.float32).tofile(files[0])
    residual.numpy().astype(np.int32).tofile(files[1])
    args = [str(harness), str(library), str(files[0]), str(files[1]), str(batch), str(n), str(residual.shape[1])]
    args += [str(schedule.k_div), str(schedule.step), str(files[2]), str(iters)]
    run = subprocess.run(args, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"harness failed: {run.stderr.strip()}")
    return np.fromfile(files[2], dtype=np.int32).reshape(batch, schedule.k_div), json.loads(run.stdout.strip().splitlines()[-1])


def planted_out_of_range(harness, library, gram, residual, schedule, out_dir) -> int:
    """Token id N in image 0 of a two-image batch: image 0 must be all -1, image 1 as the reference."""
    gram2, residual2 = torch.cat([gram, gram]), torch.cat([residual, residual])
    residual2[0, 7] = gram.shape[1]
    kept, _ = run_harness(harness, library, gram2, residual2, schedule, out_dir, 0)
    expected = residual_prune(gram[0], residual[0], schedule.k_div, schedule.step).numpy()
    if (kept[0] == -1).all() and np.array_equal(kept[1], expected):
        print("planted token id N: image rejected (-1 row), the other image unaffected")
        return 0
    print(f"MISMATCH planted token id N: kept {kept[:, :6]}")
    return 1


def torch_prune_timing(gram, residual, schedule, repeats):
    """The unrolled static selector's pruning stage on the GPU: eager, then replayed as a CUDA graph."""
    module = UnrolledResidualPrune(schedule)
    g, r = gram.cuda(), residual.cuda()
    eager = measure("torch unrolled (eager)", lambda: module(g, r), warmup=5, repeats=repeats, sync=torch.cuda.synchronize)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            module(g, r)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        module(g, r)
    replay = measure("torch unrolled (CUDA graph)", graph.replay, warmup=5, repeats=repeats, sync=torch.cuda.synchronize)
    return eager, replay


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tensorrt-include", help="TensorRT include/ for the build (default: system paths)")
    p.add_argument("--build-dir", default="build/plugin", help="CMake build folder (default: build/plugin)")
    p.add_argument("--repeats", type=int, default=2, help="corpus instances of each case (default: 2)")
    p.add_argument("--iters", type=int, default=200, help="timed enqueues per case (default: 200)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("no CUDA GPU visible to torch: the harness runs the kernel on real CUDA buffers")
    build_dir = Path(args.build_dir)
    library, harness = build_dir / "libflashvlm_plugins.so", build_dir / "flashvlm_plugin_harness"
    if not (library.exists() and harness.exists()):
        build_plugin(args.tensorrt_include, build_dir, harness_sources=Path(__file__).resolve().parents[1] / "tests/csrc")
    failures, rows = 0, []
    with tempfile.TemporaryDirectory() as scratch:
        for n, budget in CASES:
            cases = selector_corpus(Geometry(n, 1024, 4096, 128, 1), repeats=args.repeats)
            matched = 0
            for case in cases:
                gram, residual, schedule = reference_inputs(case, budget)
                expected = residual_prune(gram[0], residual[0], schedule.k_div, schedule.step).numpy()
                kept, _ = run_harness(harness, library, gram, residual, schedule, Path(scratch), 0)
                if np.array_equal(kept[0], expected):
                    matched += 1
                else:
                    failures += 1
                    print(f"MISMATCH N={n} K={budget} {case.name}: first differences at {np.nonzero(kept[0] != expected)[0][:5]}")
            _, timing = run_harness(harness, library, gram, residual, schedule, Path(scratch), args.iters)
            if n == 576 and budget == 64:
                failures += planted_out_of_range(harness, library, gram, residual, schedule, Path(scratch))
            eager, replay = torch_prune_timing(gram, residual, schedule, repeats=50)
            rows.append((n, budget, schedule.n_rounds, matched, len(cases), timing, eager, replay))
    print(f"GPU: {rows[0][5]['gpu']} (sm {rows[0][5]['cc']}), torch {torch.__version__}")
    print(
        f"{'N':>5} {'K':>4} {'rounds':>6} {'parity':>7} {'plugin us (p10-p90)':>22} {'torch eager us':>15} {'torch graph us':>15} {'speed-up vs graph':>18}"
    )
    for n, budget, rounds, matched, total, t, eager, replay in rows:
        speedup = replay.median_ms * 1e3 / t["median_us"]
        print(
            f"{n:>5} {budget:>4} {rounds:>6} {matched:>3}/{total:<3} {t['median_us']:>8.1f} ({t['p10_us']:.1f}-{t['p90_us']:.1f})"
            f" {eager.median_ms * 1e3:>15.1f} {replay.median_ms * 1e3:>15.1f} {speedup:>17.1f}x"
        )
    print("PASSED: plugin indices equal the reference on every case" if failures == 0 else f"FAILED: {failures} mismatches")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
