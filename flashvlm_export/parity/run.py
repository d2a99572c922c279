"""Run the parity corpus through every backend, report as ALGORITHM.md says, save Polygraphy records."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import load_graph
from flashvlm_export.artifacts.files import human_size
from flashvlm_export.backend import CPU, OPENVINO, Backend, runtime_label
from flashvlm_export.errors import MissingDependencyError, UsageError
from flashvlm_export.export.graphs import ExportRequest, request_from_metadata
from flashvlm_export.export.interface import (
    BUDGET,
    ENCODER_OUTPUTS,
    INDICES,
    PIXEL_VALUES,
    PROJECTED_FEATURES,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISUAL_EMBEDS,
)
from flashvlm_export.export.metadata import graph_metadata
from flashvlm_export.parity.backends import OnnxRuntime, PipelineFeatures, PipelineReference, SelectorReference, TorchModule
from flashvlm_export.parity.compare import (
    ARITHMETIC_BOUNDS,
    BackendReport,
    encoder_bounds,
    layer_summary,
    sensitivity_overlaps,
)
from flashvlm_export.parity.corpus import Case, Geometry, pipeline_corpus, selector_corpus
from flashvlm_export.parity.crops import CropReference, CropView
from flashvlm_export.progress import plural
from flashvlm_export.selector.schedule import RoundSchedule, round_schedule


def geometry_of(request: ExportRequest) -> Geometry:
    s = request.spec
    span = (request.budget_min, request.budget) if request.ranged else None
    return Geometry(
        request.tokens, s.vision_hidden, s.text_hidden, request.t_max, request.batch, span, request.frames, request.deepstack
    )


def check_graph_interface(graph: Path, request: ExportRequest) -> None:
    """The graph's own inputs and outputs must be what its metadata declares (an edited graph is refused)."""
    proto = load_graph(graph)
    declared = request.interface()
    own = {
        v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
        for v in list(proto.graph.input) + list(proto.graph.output)
    }
    want = {t.name: t.shape for t in declared.inputs + declared.outputs}
    if own != want:
        diff = "; ".join(
            f"{n}: graph {own.get(n)} vs metadata {want.get(n)}"
            for n in sorted(set(own) | set(want))
            if own.get(n) != want.get(n)
        )
        raise UsageError(f"{graph} does not match its own metadata ({diff}); re-export it with flashvlm-export")


def validate_cases(cases: list[Case], request: ExportRequest) -> None:
    """Each case must feed exactly the graph's inputs, at its shapes, finite after the cast: else a one-line error."""
    if not cases:
        raise UsageError("no parity cases to run: the inputs are empty; pass a non-empty --load-inputs file or drop it")
    interface = request.interface()
    for case in cases:
        for spec in interface.inputs:
            name, shape, dtype = spec.name, spec.shape, spec.dtype
            if name not in case.feeds:
                raise UsageError(
                    f"parity case {case.name} lacks input {name!r}; the graph takes {', '.join(interface.input_names)}"
                )
            value = np.asarray(case.feeds[name])
            if value.shape != shape:
                hint = ""
                if name == PIXEL_VALUES and value.ndim == 4:
                    hint = f" ({request.spec.label} takes {request.spec.image_shape[0]}x{request.spec.image_shape[1]} (height x width) images)"
                raise UsageError(
                    f"parity case {case.name} input {name!r} has shape {tuple(value.shape)}, the graph takes {shape}{hint}; "
                    "resize or re-export with matching --batch/--t-max"
                )
            with np.errstate(over="ignore", invalid="ignore"):
                value = value.astype(dtype, copy=False)
            if name == BUDGET and not np.all((value >= request.budget_min) & (value <= request.budget)):
                raise UsageError(
                    f"parity case {case.name} feeds budgets {value.tolist()}, outside the graph's range "
                    f"{request.budget_label.replace('-', '..')}; feed budgets in the range"
                )
            if dtype is np.float32 and not np.isfinite(value).all():
                bad = "NaN" if np.isnan(value).any() else "Inf (a value beyond float32's range)"
                raise UsageError(
                    f"parity case {case.name} input {name!r} contains {bad}; parity needs finite float32 inputs, fix the data"
                )
            case.feeds[name] = value


def load_cases(path: Path) -> list[Case]:
    """Cases from a Polygraphy inputs JSON (a list of feed dicts), as Polygraphy's `--save-inputs` writes it."""
    from polygraphy.json import load_json

    from flashvlm_export.artifact_paths import own_file

    own_file(path, "--load-inputs", "inputs", "pass a Polygraphy inputs JSON")  # a regular file of a plausible size
    try:
        feeds_list = load_json(str(path))
    except Exception as exc:
        raise UsageError(f"--load-inputs {path} is not a Polygraphy inputs JSON ({type(exc).__name__})") from None
    shape = "a list of {input name: array} objects, as parity saves them (graphs/parity/*_inputs.json)"
    if not isinstance(feeds_list, list) or not all(isinstance(feeds, dict) for feeds in feeds_list):
        raise UsageError(f"--load-inputs {path} holds {type(feeds_list).__name__} data, not {shape}")
    try:
        return [Case(f"loaded#{i}", {str(k): np.asarray(v) for k, v in feeds.items()}) for i, feeds in enumerate(feeds_list)]
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--load-inputs {path} has an entry that is not an array ({exc}); it must be {shape}") from None


def save_records(
    cases: list[Case],
    reports: list[BackendReport],
    save_dir: Path,
    stem: str,
    schedule: RoundSchedule,
    min_overlap: float | None = None,
    log=print,
    positions: np.ndarray | None = None,
    ranged: bool = False,
) -> list[Path]:
    """Polygraphy `--load-inputs` / `--load-outputs` files and the three-layer report JSON.

    The outputs file holds, per case, the reference's indices and what parity/polygraphy_compare.py judges a replay
    with (`polygraphy run ... --compare-func-script`): the outcome floor, the reference's own sensitivity, the schedule,
    and for a graph that returns positions each token's (t, h, w) (`positions`, (N, 3)).
    """
    from polygraphy.comparator import IterationResult, RunResults
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    from flashvlm_export.parity import polygraphy_compare as replay

    G_LOGGER.module_severity = G_LOGGER.ERROR

    from flashvlm_export.artifacts.ownership import PRODUCER, note_written
    from flashvlm_export.artifacts.placement import atomic_outputs

    report_path = save_dir / record_names(stem)[-1]
    record = {
        "producer": PRODUCER,
        "cases": [c.name for c in cases],
        "backends": [r.to_dict() for r in reports],
        "passed": all(reports),
    }
    if (
        ranged
    ):  # the replay judges one schedule per record; a budget-range graph has one per image (a clip, per group): the report only
        replaced = [report_path] if report_path.exists() else []
        with atomic_outputs([report_path]) as (temp_report,):
            temp_report.write_text(json.dumps(record, indent=2) + "\n")
        log(
            "Parity: no Polygraphy replay records for a budget-range or clip graph (the replay judges one image at one budget per record); the report only"
        )
        if replaced:
            log(f"Parity: replaced the earlier record {report_path}")
        return [report_path]
    paths = [save_dir / name for name in record_names(stem)]
    replaced = [p for p in paths if p.exists()]
    with atomic_outputs(paths) as (temp_inputs, temp_outputs, temp_report):
        save_json([c.feeds for c in cases], str(temp_inputs), description="flashvlm parity inputs")
        results = RunResults()
        sensitivity = [s for c in cases for s in c.reference_sensitivity]
        floor = np.float64(replay.replay_floor(sensitivity, schedule.budget / schedule.n_tokens, min_overlap))
        iterations = [
            IterationResult(
                outputs={
                    INDICES: c.reference_indices,
                    replay.OVERLAP_FLOOR: floor,
                    replay.REFERENCE_SENSITIVITY: np.asarray(c.reference_sensitivity, dtype=np.float64),
                    replay.ROUND_SCHEDULE: replay.schedule_record(schedule),
                    **({} if positions is None else {replay.TOKEN_POSITIONS: positions}),
                },
                runner_name="reference",
            )
            for c in cases
        ]
        results.append(("reference", iterations))
        results.save(str(temp_outputs))
        temp_report.write_text(json.dumps(record, indent=2) + "\n")
    note_written(paths[:2])  # Polygraphy's records carry no stamp: the folder's ledger lists them
    if replaced:
        log(f"Parity: replaced the earlier records {', '.join(str(p) for p in replaced)}")
    return paths


def _report_only(request) -> bool:
    """A budget-range, clip or crops graph: the replay judges one image at one budget per record, so the report only."""
    return request.ranged or request.clip is not None or request.crops > 1


def record_names(stem: str, report_only: bool = False) -> list[str]:
    """The files parity saves for a graph `stem`: the Polygraphy inputs and reference outputs (unless `report_only`),
    then the report."""
    return ([] if report_only else [f"{stem}_inputs.json", f"{stem}_reference_outputs.json"]) + [f"{stem}_parity.json"]


def check_save_dir(save_dir: Path, names: list[str] = ()) -> None:
    """Fail before any work when the records cannot be written, or one of `names` there is a file this tool did not
    write (artifacts/ownership.py: only its own earlier records are replaced)."""
    from flashvlm_export.artifacts.ownership import check_replaceable

    try:
        save_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"--save-dir {save_dir} cannot be created ({exc.strerror}); choose another --save-dir or pass --no-save"
        ) from None
    if not os.access(save_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--save-dir {save_dir} is not writable; choose another --save-dir or pass --no-save")
    for name in names:
        check_replaceable(save_dir / name, "move it away, choose another --save-dir, or pass --no-save")


def reference_backends(request: ExportRequest, parts):
    """The reference and the static torch module (built with its verification outputs) for this graph."""
    if not request.selector_only and parts is None:
        raise UsageError("the full graph's parity needs its weights: pass --random-weights or --model-path")
    if request.crops > 1:  # crop by crop (parity/crops.py)
        features = None if request.selector_only else PipelineFeatures(parts)
        reference = CropReference(SelectorReference(request.crop_budget, request.config), CropView.of(request), features)
    elif request.selector_only:
        reference = SelectorReference(request.budget, request.config, clip=request.clip)
    else:
        reference = PipelineReference(parts, request.budget, request.config, request.clip)
    return reference, TorchModule(request.module(parts, verification=True), request.interface())


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
    min_overlap: float | None = None,
    backends: list | None = None,
    provider: str = CPU,
) -> list[BackendReport]:
    """The three layers of ALGORITHM.md for static torch, the graph in ONNX Runtime (or OpenVINO: provider OPENVINO,
    backend.py) and any extra backend.

    `backends` replaces the default backends (static torch, the graph's runtime) - for tests that plant a wrong one.
    """
    meta = meta or graph_metadata(graph)
    request = request_from_metadata(meta, str(graph))
    if graph.is_file():
        check_graph_interface(graph, request)
    if save_dir is not None:
        check_save_dir(save_dir, record_names(graph.stem, report_only=_report_only(request)))
    if cases is None:
        if request.selector_only:
            cases = selector_corpus(geometry_of(request), seed, repeats)
        else:
            cases = pipeline_corpus(geometry_of(request), request.spec.image_shape, seed, repeats, grid=request.spec.grid)
    validate_cases(cases, request)
    reference, static = reference_backends(request, parts)
    with tempfile.TemporaryDirectory(prefix="flashvlm-verify-") as scratch:
        if backends is None:
            backends = [static]
            if graph.is_file():
                try:
                    runtime = OnnxRuntime(graph, request.interface(), provider, plugin=request.plugin, scratch=Path(scratch))
                    backends.append(runtime)
                except MissingDependencyError as exc:
                    if request.precision == "fp32" or provider == OPENVINO:  # OpenVINO asked for: it runs, or one line
                        raise
                    log(f"Parity: skipped {runtime_label(provider)}: {exc}")  # e.g. no bf16 kernels on the CPU provider
        backends = list(backends) + list(extra_backends or [])
        reports = run_backends(request, reference, backends, cases, seed, min_overlap)
    log(
        f"Parity: {graph.name} ({request.kind} graph, {request.spec.name}, K={request.budget_label}, batch {request.batch}, "
        f"{request.precision}), {plural(len(cases), 'case')} x {plural(request.batch, 'image')} against the reference"
    )
    for report in reports:
        for line in report.lines():
            log(f"  {line}")
    for line in layer_summary(reports):
        log(line)
    if save_dir is not None:
        schedule = request.schedule if request.crops > 1 else round_schedule(request.tokens, request.budget, request.config)
        table = request.token_positions().numpy() if request.positions else None
        # the replay judges one image's decisions per record; a clip's are per group or grouped, a photo's per crop:
        # the report only
        whole = _report_only(request)
        paths = save_records(cases, reports, save_dir, graph.stem, schedule, min_overlap, log, table, ranged=whole)
        log(f"Parity: saved {', '.join(str(p) for p in paths)} ({human_size(sum(p.stat().st_size for p in paths))})")
    return reports


def run_backends(request: ExportRequest, reference: Backend, backends: list[Backend], cases: list[Case], seed: int, min_overlap):
    """Every case through the reference and each backend, accumulated into one BackendReport per backend."""
    schedule = request.schedule
    bounds = dict(ARITHMETIC_BOUNDS)
    bounds.update(encoder_bounds(request.precision))  # fp16/bf16: measured, not a gate; int8/fp8: loose gates
    selector_reference = SelectorReference(request.crop_budget, request.config, clip=request.clip)
    view = CropView.of(request)  # a model cut into crops is checked crop by crop (the identity otherwise)
    table = request.token_positions().numpy() if request.positions else None
    reports = {
        b.name: BackendReport(b.name, min_overlap, token_positions=table, clip=request.clip, crops=view.crops) for b in backends
    }
    for number, case in enumerate(cases):
        expected = reference.infer(case.feeds)
        case.reference_indices = expected[INDICES]
        budgets = case.feeds.get(BUDGET)  # a budget-range graph's: each image checked at its own budget
        sensitivity = sensitivity_overlaps(expected, schedule, seed=seed * 100_003 + number, budgets=budgets, clip=request.clip)
        case.reference_sensitivity = sensitivity
        for backend in backends:
            outputs = view(backend.infer(case.feeds))
            if request.selector_only:
                basis, own = view(case.feeds), expected
            else:  # the selector checked on the backend's own encoder outputs
                basis = {
                    name: outputs.get(name, expected[name]) for name in ENCODER_OUTPUTS if name in outputs or name in expected
                }
                basis.update(view({TEXT_EMBEDS: case.feeds[TEXT_EMBEDS], TEXT_MASK: case.feeds[TEXT_MASK]}))
                if budgets is not None:
                    basis[BUDGET] = budgets
                own = selector_reference.infer(basis)
                if PROJECTED_FEATURES not in outputs:  # no P(X) of its own to check the gathered rows against
                    outputs = {name: value for name, value in outputs.items() if name != VISUAL_EMBEDS}
            reports[backend.name].add_case(
                case.name, expected, own, outputs, basis, schedule, request.config, bounds, sensitivity
            )
    return list(reports.values())
