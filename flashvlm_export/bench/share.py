"""The selector's share of a split export, for any model: its encoder and each selector timed in one run.

`flashvlm-export bench --manifest M`: the manifest's encoder graph and every selector graph in ONNX Runtime
CPU, on one corpus image at the model's own geometry, interleaved run by run (encoder, then each selector on
what the encoder wrote) so that drift hits all alike. The share is selector / (encoder + selector). A split of
several shapes (--aspects): each shape in turn, its rows marked with the shape.

`--backend onnxruntime,openvino` times the chain in each runtime in turn, and how long each takes to start
(every session ready to run): ONNX Runtime keeps no cache; OpenVINO's first start compiles into an empty model
cache (a temporary folder, so the one beside the graphs is left as it is), its cached start imports from it.
"""

from __future__ import annotations

import time
from pathlib import Path

from flashvlm_export.backend import CPU, ONNXRUNTIME_BACKEND, OPENVINO, backend_provider, runtime_label
from flashvlm_export.bench.timing import HEADER, Timing


def selector_share(
    manifest_path: Path, warmup: int, repeats: int, log=print, backends: tuple[str, ...] = (ONNXRUNTIME_BACKEND,)
) -> list[dict]:
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.export.shapes import is_shape_set, read_shape_set

    providers = [backend_provider(b) or CPU for b in backends]  # every runtime installed, before any work
    manifests = [(None, read_manifest(Path(manifest_path)))] if not is_shape_set(manifest_path) else None
    if manifests is None:
        shape_set = read_shape_set(Path(manifest_path))
        manifests = [(key, shape_set.manifest(i)) for i, key in enumerate(shape_set.keys)]
    rows = []
    for key, manifest in manifests:
        for backend, provider in zip(backends, providers, strict=True):
            marks = {"backend": backend} if key is None else {"backend": backend, "shape": key}
            rows += [dict(row, **marks) for row in _share(manifest, warmup, repeats, log, provider)]
    return rows


def start_chain(manifest, provider: str, log=print):
    """The manifest's chain in `provider`, and its start times in seconds: {"start_s"} for ONNX Runtime; for OpenVINO
    {"first_start_s", "cached_start_s"}: compiled into an empty temporary model cache, then started again from it."""
    from flashvlm_export.runtime.chain import OpenVinoChain, OrtChain

    if provider != OPENVINO:
        start = time.perf_counter()
        chain = OrtChain(manifest, provider)
        started = time.perf_counter() - start
        log(f"Bench: {runtime_label(provider)} chain started in {started:.2f} s (ONNX Runtime keeps no compiled-model cache)")
        return chain, {"start_s": started}
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flashvlm-openvino-cache-") as cache:
        start = time.perf_counter()
        OpenVinoChain(manifest, cache=Path(cache))
        first = time.perf_counter() - start
        start = time.perf_counter()
        chain = OpenVinoChain(manifest, cache=Path(cache))
        cached = time.perf_counter() - start
    log(f"Bench: {runtime_label(provider)} chain started in {first:.2f} s compiling, {cached:.2f} s from its model cache")
    return chain, {"first_start_s": first, "cached_start_s": cached}


def _share(manifest, warmup: int, repeats: int, log=print, provider: str = CPU) -> list[dict]:
    from flashvlm_export.parity.corpus import pipeline_corpus
    from flashvlm_export.parity.run import geometry_of

    first = manifest.request(manifest.budgets[0])
    case = pipeline_corpus(geometry_of(first), first.spec.image_shape, repeats=1, grid=first.spec.grid)[0]
    chain, starts = start_chain(manifest, provider, log)
    samples: dict[str, list[float]] = {"encoder": [], **{f"selector K={k}": [] for k in manifest.budgets}}
    for run in range(warmup + repeats):
        start = time.perf_counter()
        chain.encode(case.feeds)
        times = [("encoder", time.perf_counter() - start)]
        for k in manifest.budgets:
            start = time.perf_counter()
            chain.select(case.feeds, k)
            times.append((f"selector K={k}", time.perf_counter() - start))
        if run >= warmup:
            for name, seconds in times:
                samples[name].append(seconds * 1e3)
    timings = {name: Timing.of(name, values) for name, values in samples.items()}
    encoder = timings.pop("encoder")
    r = manifest.record
    log(
        f"Bench: {manifest.path} ({r['model']}, N={first.tokens}, {r['precision']} encoder, batch {r['batch']}), "
        f"{runtime_label(provider)}, {repeats} runs after {warmup} warm-up"
    )
    log(HEADER)
    log(encoder.row())
    rows = []
    for k, timing in zip(manifest.budgets, timings.values(), strict=True):
        share = timing.median_ms / (encoder.median_ms + timing.median_ms)
        log(f"{timing.row()}  share of encoder + selector {100 * share:.2f}%")
        rows.append({"budget": k, "encoder": encoder.to_dict(), "selector": timing.to_dict(), "share": share, **starts})
    return rows
