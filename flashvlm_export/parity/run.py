"""Run the parity corpus through every backend, report as ALGORITHM.md says, save Polygraphy records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from flashvlm_export.errors import MissingDependencyError, UsageError
from flashvlm_export.export.graphs import ExportRequest, request_from_metadata
from flashvlm_export.parity.backends import OnnxRuntime, PipelineReference, SelectorReference, TorchModule
from flashvlm_export.parity.compare import ParityReport, compare_case, overlap_case
from flashvlm_export.parity.corpus import PIPELINE_INPUTS, SELECTOR_INPUTS, Case, Geometry, pipeline_corpus, selector_corpus


def graph_metadata(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise UsageError(f"graph {path} does not exist; export it first with flashvlm-export")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UsageError(
            f"{path} is not a readable ONNX file ({type(exc).__name__}); pass a graph from flashvlm-export"
        ) from None
    return {p.key: p.value for p in proto.metadata_props}


def geometry_of(request: ExportRequest) -> Geometry:
    s = request.spec
    return Geometry(request.tokens, s.vision_hidden, s.text_hidden, request.t_max, request.batch)


def expected_inputs(request: ExportRequest) -> dict[str, tuple[tuple[int, ...], type]]:
    s, b, t = request.spec, request.batch, request.t_max
    text = {"text_embeds": ((b, t, s.text_hidden), np.float32), "text_mask": ((b, t), np.bool_)}
    if request.selector_only:
        return {
            "vision_features": ((b, request.tokens, s.vision_hidden), np.float32),
            "cls_attention": ((b, request.tokens), np.float32),
            "projected_features": ((b, request.tokens, s.text_hidden), np.float32),
            **text,
        }
    return {"pixel_values": ((b, 3, s.image_size, s.image_size), np.float32), **text}


def validate_cases(cases: list[Case], request: ExportRequest) -> None:
    """Each case must feed exactly the graph's inputs, at its shapes, finite: else a one-line error."""
    expected = expected_inputs(request)
    for case in cases:
        for name, (shape, dtype) in expected.items():
            if name not in case.feeds:
                raise UsageError(f"parity case {case.name} lacks input {name!r}; the graph takes {', '.join(expected)}")
            value = case.feeds[name]
            if value.shape != shape:
                hint = ""
                if name == "pixel_values" and value.ndim == 4:
                    hint = f" ({request.spec.name} takes {request.spec.image_size}x{request.spec.image_size} images)"
                raise UsageError(
                    f"parity case {case.name} input {name!r} has shape {tuple(value.shape)}, the graph takes {shape}{hint}; "
                    "resize or re-export with matching --batch/--t-max"
                )
            if dtype is np.float32 and not np.isfinite(value).all():
                bad = "NaN" if np.isnan(value).any() else "Inf"
                raise UsageError(
                    f"parity case {case.name} input {name!r} contains {bad}; parity needs finite inputs, fix the data"
                )
            case.feeds[name] = value.astype(dtype, copy=False)


def load_cases(path: Path) -> list[Case]:
    """Cases from a Polygraphy inputs JSON (a list of feed dicts), as `--save-inputs` writes it."""
    from polygraphy.json import load_json

    if not path.is_file():
        raise UsageError(f"--load-inputs {path} does not exist; pass a Polygraphy inputs JSON")
    try:
        feeds_list = load_json(str(path))
    except Exception as exc:
        raise UsageError(f"--load-inputs {path} is not a Polygraphy inputs JSON ({type(exc).__name__})") from None
    return [Case(f"loaded#{i}", {k: np.asarray(v) for k, v in feeds.items()}) for i, feeds in enumerate(feeds_list)]


def save_records(
    cases: list[Case], reference_outputs: list[np.ndarray], save_dir: Path, stem: str, log=print
) -> tuple[Path, Path]:
    """Polygraphy `--load-inputs` / `--load-outputs` files, so a TensorRT engine can replay the same cases."""
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.ERROR

    from flashvlm_export.artifacts import atomic_outputs

    save_dir.mkdir(parents=True, exist_ok=True)
    inputs_path = save_dir / f"{stem}_inputs.json"
    outputs_path = save_dir / f"{stem}_reference_outputs.json"
    replaced = [p for p in (inputs_path, outputs_path) if p.exists()]
    with atomic_outputs([inputs_path, outputs_path]) as (temp_inputs, temp_outputs):
        save_json([c.feeds for c in cases], str(temp_inputs), description="flashvlm parity inputs")
        results = RunResults()
        iterations = [IterationResult(outputs={"indices": out}, runner_name="reference") for out in reference_outputs]
        results.append(("reference", iterations))
        results.save(str(temp_outputs))
    if replaced:
        log(f"Parity: replaced the earlier records {', '.join(str(p) for p in replaced)}")
    return inputs_path, outputs_path


def run_parity(
    graph: Path,
    parts=None,
    seed: int = 0,
    repeats: int = 2,
    cases: list[Case] | None = None,
    save_dir: Path | None = None,
    extra_backends: list | None = None,
    log=print,
    meta: dict[str, str] | None = None,
) -> list[ParityReport]:
    """Reference vs static torch vs ONNX Runtime (and any extra backend) on one exported graph."""
    meta = meta or graph_metadata(graph)
    request = request_from_metadata(meta, str(graph))
    geometry = geometry_of(request)
    if cases is None:
        if request.selector_only:
            cases = selector_corpus(geometry, seed, repeats)
        else:
            cases = pipeline_corpus(geometry, request.spec.image_size, seed, repeats)
    validate_cases(cases, request)
    if request.selector_only:
        reference = SelectorReference(request.budget, request.config)
        static = TorchModule(request.module(), SELECTOR_INPUTS)
    else:
        if parts is None:
            raise UsageError("the full graph's parity needs its weights: pass --random-weights or --model-path")
        reference = PipelineReference(parts, request.budget, request.config)
        static = TorchModule(request.module(parts), PIPELINE_INPUTS)
    backends = [static]
    if graph.is_file():
        try:
            backends.append(OnnxRuntime(graph, plugin=request.plugin))
        except MissingDependencyError as exc:
            if request.precision == "fp32":
                raise
            log(f"Parity: skipped ONNX Runtime: {exc}")  # reduced precision: reported, not fatal
    backends += list(extra_backends or [])
    # a backend with a reduced-precision encoder is reported by overlap, as ALGORITHM.md says
    reports = {
        b.name: ParityReport(b.name, overlaps=[] if getattr(b, "precision", request.precision) != "fp32" else None)
        for b in backends
    }
    reference_outputs = []
    for case in cases:
        ref_indices, near_ties = reference.run(case.feeds)
        reference_outputs.append(ref_indices)
        for backend in backends:
            got = backend.run(case.feeds)
            report = reports[backend.name]
            if report.overlaps is not None:
                report.overlaps += overlap_case(ref_indices, got)
            else:
                report.results += compare_case(case.name, ref_indices, near_ties, got)
    log(
        f"Parity: {graph.name} ({request.kind} graph, {request.spec.name}, K={request.budget}, batch {request.batch}), "
        f"{len(cases)} cases x {request.batch} images against the reference"
    )
    for report in reports.values():
        for line in report.lines():
            log(f"  {line}")
    if save_dir is not None:
        inputs_path, outputs_path = save_records(cases, reference_outputs, save_dir, graph.stem, log)
        log(f"Parity: saved Polygraphy records {inputs_path} and {outputs_path}")
    return list(reports.values())
