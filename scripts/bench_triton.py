"""Throughput and p50/p99 latency of a split's CPU Triton repository against the split chain in-process, same inputs.

    python scripts/bench_triton.py --manifest SPLIT/manifest.json [--requests 48] [--instances 1]

Writes the CPU repository to a temporary folder, starts tritonserver (serve/server.py finds it), sends gRPC
requests at concurrency 1, 4 and 16 (budgets alternating over the manifest's), then the same requests through
SplitChain.infer from as many threads. One run; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from flashvlm_export.export.interface import INDICES, PIXEL_VALUES, TEXT_EMBEDS, TEXT_MASK
from flashvlm_export.export.manifest import read_manifest
from flashvlm_export.runtime.chain import SplitChain
from flashvlm_export.serve.layout import graph_tensors
from flashvlm_export.serve.repository import write_repository
from flashvlm_export.serve.server import TritonServer, find_tritonserver, import_tritonclient


def request_inputs(manifest, count: int) -> list[dict[str, np.ndarray]]:
    """`count` requests of the split's own shapes, seeded; the text mask a few tokens long."""
    shapes = {
        t.name: t.dims
        for t in graph_tensors(manifest.encoder_graph)[0] + graph_tensors(manifest.selector_graph(manifest.budgets[0]))[0]
    }
    found = []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        mask = np.zeros(shapes[TEXT_MASK], dtype=bool)
        mask[:, : 4 + seed % 16] = True
        found.append(
            {
                PIXEL_VALUES: rng.standard_normal(shapes[PIXEL_VALUES]).astype(np.float32),
                TEXT_EMBEDS: rng.standard_normal(shapes[TEXT_EMBEDS]).astype(np.float32),
                TEXT_MASK: mask,
            }
        )
    return found


def grpc_call(url: str):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)  # one per thread
    types = {np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL", np.dtype(np.int64): "INT64"}

    def call(feeds, budget):
        arrays = {**feeds, "budget": np.full((len(feeds[TEXT_MASK]), 1), budget, dtype=np.int64)}
        tensors = []
        for name, array in arrays.items():
            tensor = grpc.InferInput(name, list(array.shape), types[array.dtype])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        return client.infer("flashvlm", tensors, client_timeout=120).as_numpy(INDICES)

    return call


def measure(make_call, jobs, concurrency: int) -> tuple[float, list[float], list]:
    """(wall seconds, each request's latency, answers): `concurrency` threads, each with its own caller."""
    import threading

    local = threading.local()

    def one(job):
        if not hasattr(local, "call"):
            local.call = make_call()
        start = time.perf_counter()
        answer = local.call(*job)
        return time.perf_counter() - start, answer

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, jobs[:concurrency]))  # warm: each thread's caller, the server's first runs
        start = time.perf_counter()
        done = list(pool.map(one, jobs))
        wall = time.perf_counter() - start
    return wall, [d[0] for d in done], [d[1] for d in done]


def row(label: str, concurrency: int, wall: float, latencies: list[float]) -> str:
    ms = np.asarray(latencies) * 1e3
    return (
        f"| {label} | {concurrency} | {len(latencies) / wall:.1f} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--requests", type=int, default=48)
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    binary, why = find_tritonserver()
    why = why or import_tritonclient()
    if why:
        raise SystemExit(f"bench_triton: {why}")
    manifest = read_manifest(Path(args.manifest))
    feeds = request_inputs(manifest, 8)
    jobs = [(feeds[i % len(feeds)], manifest.budgets[i % len(manifest.budgets)]) for i in range(args.requests)]
    chain = SplitChain(manifest)
    lines = ["| path | concurrency | requests/s | p50 ms | p99 ms |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        repo = write_repository(manifest.path, Path(tmp) / "repo", instances=args.instances, log=lambda _: None)
        with TritonServer(binary, repo, Path(tmp) / "server.log") as server:
            for concurrency in (1, 4, 16):
                wall, lat, answers = measure(lambda: grpc_call(server.grpc_url), jobs, concurrency)
                mine = [chain.infer(f, k)[INDICES] for f, k in jobs]
                assert all(np.array_equal(a, b) for a, b in zip(answers, mine, strict=True)), "Triton answered other indices"
                lines.append(row(f"Triton CPU repository, gRPC ({args.instances} instance)", concurrency, wall, lat))
                wall, lat, _ = measure(lambda: lambda one, budget: chain.infer(one, budget)[INDICES], jobs, concurrency)
                lines.append(row("split chain in-process", concurrency, wall, lat))
    print(
        f"{manifest.record['model']}, K = {', '.join(map(str, manifest.budgets))}, {args.requests} requests per row; "
        f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
