"""The selector's share of a split export, for any model: its encoder and each selector timed in one run.

`flashvlm-export bench --manifest M`: the manifest's encoder graph and every selector graph in ONNX Runtime
CPU, on one corpus image at the model's own geometry, interleaved run by run (encoder, then each selector on
what the encoder wrote) so that drift hits all alike. The share is selector / (encoder + selector). A split of
several shapes (--aspects): each shape in turn, its rows marked with the shape.
"""

from __future__ import annotations

import time
from pathlib import Path

from flashvlm_export.backend import CPU
from flashvlm_export.bench.timing import HEADER, Timing


def selector_share(manifest_path: Path, warmup: int, repeats: int, log=print) -> list[dict]:
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.export.shapes import is_shape_set, read_shape_set

    if not is_shape_set(manifest_path):
        return _share(read_manifest(Path(manifest_path)), warmup, repeats, log)
    shape_set = read_shape_set(Path(manifest_path))
    rows = []
    for i, key in enumerate(shape_set.keys):
        rows += [dict(row, shape=key) for row in _share(shape_set.manifest(i), warmup, repeats, log)]
    return rows


def _share(manifest, warmup: int, repeats: int, log=print) -> list[dict]:
    from flashvlm_export.parity.corpus import pipeline_corpus
    from flashvlm_export.parity.run import geometry_of
    from flashvlm_export.runtime.chain import OrtChain

    first = manifest.request(manifest.budgets[0])
    case = pipeline_corpus(geometry_of(first), first.spec.image_shape, repeats=1, grid=first.spec.grid)[0]
    chain = OrtChain(manifest, CPU)
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
        f"ONNX Runtime CPU, {repeats} runs after {warmup} warm-up"
    )
    log(HEADER)
    log(encoder.row())
    rows = []
    for k, timing in zip(manifest.budgets, timings.values(), strict=True):
        share = timing.median_ms / (encoder.median_ms + timing.median_ms)
        log(f"{timing.row()}  share of encoder + selector {100 * share:.2f}%")
        rows.append({"budget": k, "encoder": encoder.to_dict(), "selector": timing.to_dict(), "share": share})
    return rows
