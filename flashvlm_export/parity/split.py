"""Parity of a split export (ALGORITHM.md "Parity"), per budget, on the chain as the runtime runs it.

For each case the encoder graph runs once into the chain's shared buffers; then, for each budget:

- layers 1 and 2 check the selector on the encoder's *own* outputs: its verification build's s, q,
  F and G against the reference computed from those same X, a, P(X); the reference's decisions
  replayed on its F and G must give its indices exactly; the chain's shipped indices (I/O-bound
  run) must equal them, and its visual_embeds must be P(X) at those indices, bit for bit;
- layer 2 also bounds the encoder's X, a, P(X) against the torch encoder (fp32: 1e-4; reported for
  fp16/bf16 encoders);
- layer 3 reports the chain end to end against the torch pipeline (fp32 torch encoder, reference
  selector): exact-match rate and index-set overlap beside the reference's own sensitivity.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path

from flashvlm_export.artifacts.ownership import PRODUCER
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.backend import CPU, runtime_label
from flashvlm_export.export.interface import (
    BUDGET,
    DEEPSTACK_EMBEDS,
    INDICES,
    KEPT,
    POSITIONS,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISUAL_EMBEDS,
)
from flashvlm_export.export.manifest import Manifest
from flashvlm_export.parity.backends import OnnxRuntime, PipelineFeatures, SelectorReference
from flashvlm_export.parity.compare import (
    ARITHMETIC_BOUNDS,
    SHIPPED_INDICES,
    BackendReport,
    encoder_bounds,
    layer_summary,
    sensitivity_overlaps,
)
from flashvlm_export.parity.corpus import Case, pipeline_corpus
from flashvlm_export.parity.crops import CropView
from flashvlm_export.parity.run import check_save_dir, geometry_of, validate_cases
from flashvlm_export.progress import plural
from flashvlm_export.runtime.chain import SplitChain


def record_name(manifest) -> str:
    """The parity record of a split: <folder>_parity.json, or one shape's of several: <folder>_364x504_parity.json."""
    return f"{manifest.folder.name}{manifest.path.stem.removeprefix('manifest')}_parity.json"


def run_split_parity(
    manifest: Manifest,
    parts,
    seed: int = 0,
    repeats: int = 2,
    cases: list[Case] | None = None,
    save_dir: Path | None = None,
    log=print,
    min_overlap: float | None = None,
    chain=None,
    provider: str = CPU,
) -> dict[int, BackendReport]:
    """The three layers per budget for the manifest's chain in ONNX Runtime (or OpenVINO: provider OPENVINO, backend.py);
    `chain` replaces it (tests plant one)."""
    requests = {k: manifest.request(k) for k in manifest.budgets}
    first = requests[manifest.budgets[0]]
    if save_dir is not None:
        check_save_dir(save_dir, [record_name(manifest)])
    if cases is None:
        cases = pipeline_corpus(geometry_of(first), first.spec.image_shape, seed, repeats, grid=first.spec.grid)
    for request in requests.values():
        validate_cases(cases, request)
    chain = chain or SplitChain(manifest, provider=provider).chain
    if manifest.record["encoder"].get("engine") is not None:
        log(
            f"Parity: {manifest.path} also lists TensorRT engines; this checks the graphs' chain in {runtime_label(provider)}, not the "
            "engines (check an engine alone with parity --engine PLAN)"
        )
    torch_encoder = PipelineFeatures(parts, clip=first.clip is not None)
    bounds = dict(ARITHMETIC_BOUNDS)
    bounds.update(encoder_bounds(manifest.record["precision"]))  # fp16/bf16: reported; int8/fp8: loose gates
    table = first.token_positions().numpy() if first.positions else None
    reports = {
        k: BackendReport(f"{chain.name}, K={k}", min_overlap, token_positions=table, clip=first.clip) for k in manifest.budgets
    }
    with tempfile.TemporaryDirectory(prefix="flashvlm-verify-") as scratch:
        verification = {
            k: OnnxRuntime(
                manifest.selector_graph(k),
                replace(r, selector_only=True, precision="fp32").interface(),
                provider,
                plugin=r.plugin,
                scratch=Path(scratch),
            )
            for k, r in requests.items()
        }
        for number, case in enumerate(cases):
            chain.encode(case.feeds)
            own_features = chain.features_on_host()  # what the chain's selectors read: the encoder's own outputs
            torch_features = torch_encoder(case.feeds)
            text = {TEXT_EMBEDS: case.feeds[TEXT_EMBEDS], TEXT_MASK: case.feeds[TEXT_MASK]}
            budgets = case.feeds.get(BUDGET)  # a budget-range split's: a budget per image, each checked at its own
            if budgets is not None:
                text[BUDGET] = budgets
            basis = {**own_features, **text}
            end_to_end = {**torch_features, **text}
            for k, request in requests.items():
                view = CropView.of(request)  # a model cut into crops: crop by crop (the identity otherwise)
                selector_reference = SelectorReference(request.crop_budget, request.config, clip=request.clip)
                expected = {**view(torch_features), **selector_reference.infer(view(end_to_end))}  # the torch pipeline
                own = selector_reference.infer(view(basis))  # the reference on the encoder's own outputs
                schedule = request.schedule
                sensitivity = sensitivity_overlaps(
                    expected, schedule, seed=seed * 100_003 + number, budgets=budgets, clip=request.clip
                )
                shipped = chain.select(case.feeds, k if budgets is None else budgets.tolist())
                outputs = verification[k].infer(basis)  # the verification build: s, q, F, G and its indices
                outputs.update(own_features)
                outputs[SHIPPED_INDICES] = shipped[INDICES]
                outputs[VISUAL_EMBEDS] = shipped[VISUAL_EMBEDS]
                if POSITIONS in shipped:  # checked against the kept tokens' own (t, h, w)
                    outputs[POSITIONS] = shipped[POSITIONS]
                if DEEPSTACK_EMBEDS in shipped:  # checked against the encoder's own DeepStack rows at the indices
                    outputs[DEEPSTACK_EMBEDS] = shipped[DEEPSTACK_EMBEDS]
                if KEPT in shipped:  # a range selector: the shipped count is the one checked (kept == the image's K)
                    outputs[KEPT] = shipped[KEPT]
                outputs = view(outputs)
                reports[k].add_case(case.name, expected, own, outputs, view(basis), schedule, request.config, bounds, sensitivity)
    r = manifest.record
    log(
        f"Parity: {manifest.path} ({r['model']}, split, {manifest.serves}, batch {r['batch']}, "
        f"{r['precision']} encoder), {plural(len(cases), 'case')} x {plural(r['batch'], 'image')}; each selector on the encoder's own outputs, "
        "the chain end to end against the torch pipeline"
    )
    for report in reports.values():
        for line in report.lines():
            log(f"  {line}")
    for line in layer_summary(list(reports.values())):
        log(line)
    if save_dir is not None:
        path = save_dir / record_name(manifest)
        record = {
            "producer": PRODUCER,
            "manifest": str(manifest.path),
            "cases": [c.name for c in cases],
            "budgets": {str(k): rep.to_dict() for k, rep in reports.items()},
            "passed": all(reports.values()),
        }
        with atomic_outputs([path]) as (temp,):
            temp.write_text(json.dumps(record, indent=2) + "\n")
        log(f"Parity: saved {path}")
    return reports
