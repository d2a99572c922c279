"""Parity as a job: its settings checked, the artifact to check (a graph, an engine and its graph, a split's
manifest, or a selector graph exported into a temporary folder for the check), the weights the artifact
records, and one PASSED or FAILED line."""

from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from flashvlm_export.errors import UsageError, arg
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.models.adapter import get_parts_logged
from flashvlm_export.models.weights import WeightsSource, weights_for_graph

MAX_PARITY_REPEATS = 50  # each repeat is 7 cases through every backend; 50 is ~350 cases


@dataclass(frozen=True)
class ParitySettings:
    corpus_seed: int = 0  # seed of the corpus and of the sensitivity noise
    repeats: int = 2  # instances of each corpus case
    save_dir: Path | None = None  # Polygraphy records and the report; None: none written
    min_overlap: float | None = None  # layer 3 as a gate: every image's overlap >= this
    backend: str = "onnxruntime"  # what runs the graph beside static torch: onnxruntime or openvino (backend.py)

    def __post_init__(self) -> None:
        from flashvlm_export.backend import backend_provider

        backend_provider(self.backend)  # a known runtime, installed: one line otherwise, before any work
        if not 1 <= self.repeats <= MAX_PARITY_REPEATS:
            raise UsageError(f"{arg('repeats', self.repeats)} is out of range; use 1 to {MAX_PARITY_REPEATS}")
        if not 0 <= self.corpus_seed < 2**32:
            raise UsageError(f"{arg('corpus_seed', self.corpus_seed)} is out of range; use 0 to {2**32 - 1}")
        if self.min_overlap is not None and not 0.0 <= self.min_overlap <= 1.0:
            raise UsageError(f"{arg('min_overlap', self.min_overlap)} is not a fraction; use a value in [0, 1]")

    @property
    def provider(self) -> str:
        """The graph's runtime as a provider (backend.py): ONNX Runtime's CPU, or OPENVINO."""
        from flashvlm_export.backend import CPU, backend_provider

        return backend_provider(self.backend) or CPU

    @property
    def gate(self) -> str:
        return " and the overlap gate" if self.min_overlap is not None else ""


@dataclass(frozen=True)
class NamedWeights:
    """The weights the user named (nothing named: the artifact's own); they must be the ones it records."""

    random_weights: bool = False
    seed: int | None = None  # None: not given
    model_path: str | None = None

    def for_artifact(self, recorded: str | None, source: str) -> WeightsSource:
        return weights_for_graph(recorded, self.random_weights, self.seed, self.model_path, source)


@contextmanager
def scratch_selector_graph(request: ExportRequest, log=print):
    """A selector graph of `request` exported into a temporary folder, removed after the check."""
    from flashvlm_export.export.graphs import export_graph

    with tempfile.TemporaryDirectory(prefix="flashvlm-parity-") as scratch:
        graph = Path(scratch) / "selector.onnx"
        start = time.perf_counter()
        export_graph(request, graph)
        log(
            f"ONNX: exported the {request.spec.name} selector at K={request.budget_label} for the check {time.perf_counter() - start:.1f}s"
        )
        yield graph


def _verdict(failed: list[str], elapsed: float, passed: str, log) -> bool:
    if failed:
        log(f"FAILED: {', '.join(failed)} ({elapsed:.1f}s)")
        return False
    log(f"PASSED: {passed} ({elapsed:.1f}s)")
    return True


def check_graph(
    graph: Path | None,
    settings: ParitySettings,
    weights: NamedWeights = NamedWeights(),
    *,
    scratch_request: ExportRequest | None = None,
    engine: Path | None = None,
    plugin_lib: str | None = None,
    polygraphy: bool = False,
    load_inputs: Path | None = None,
    log=print,
) -> bool:
    """Parity of `graph` (or `engine`'s graph, or a selector graph of `scratch_request`); True when it passed."""
    from flashvlm_export.export.graphs import request_from_metadata
    from flashvlm_export.export.metadata import graph_metadata
    from flashvlm_export.parity.run import load_cases, run_parity

    cases = load_cases(load_inputs) if load_inputs else None
    extra, meta = [], None
    if engine is not None:
        from flashvlm_export.parity.engine import engine_backend

        # the graph: --graph, else the one the engine's sidecar names in the engine's own folder
        runner = engine_backend(engine, Path(plugin_lib) if plugin_lib else None, log=log, graph=graph)
        extra, meta = [runner], runner.graph_metadata
        graph = graph or Path(runner.graph_path)
    with nullcontext(graph) if graph is not None else scratch_selector_graph(scratch_request, log) as graph:
        meta = meta or graph_metadata(graph)
        request = request_from_metadata(meta, str(graph))
        if cases is None:
            from flashvlm_export.limits import check_repeats_fit
            from flashvlm_export.parity.corpus import PIPELINE_CASES, SELECTOR_CASES

            r, names = request, SELECTOR_CASES if request.selector_only else PIPELINE_CASES
            check_repeats_fit(settings.repeats, len(names), r.spec, r.tokens, r.t_max, r.batch, r.selector_only)
        parts = None
        if not request.selector_only:  # the graph's own weights; flags naming others are refused
            parts = get_parts_logged(request.spec, weights.for_artifact(meta.get("weights"), str(graph)), log)
        start = time.perf_counter()
        s = settings
        reports = run_parity(
            graph, parts, s.corpus_seed, s.repeats, cases, s.save_dir, extra, log=log, meta=meta, min_overlap=s.min_overlap,
            provider=s.provider,
        )  # fmt: skip
        elapsed = time.perf_counter() - start
    if engine is not None and polygraphy and settings.save_dir is not None:
        from flashvlm_export.parity.polygraphy_replay import replay_with_polygraphy

        # judged by parity/polygraphy_compare.py (--compare-func-script): reported beside parity's own verdict
        replay_with_polygraphy(engine, settings.save_dir, graph.stem, plugin_lib, log=log)
    failed = [r.backend for r in reports if not r]
    return _verdict(failed, elapsed, f"layers 1 and 2 hold for every backend{settings.gate}", log)


def check_manifest(manifest_path: Path, settings: ParitySettings, weights: NamedWeights = NamedWeights(), log=print) -> bool:
    """Parity of a split export, budget by budget and the chain end to end; True when it passed."""
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.export.shapes import is_shape_set, read_shape_set
    from flashvlm_export.limits import check_repeats_fit
    from flashvlm_export.parity.corpus import PIPELINE_CASES
    from flashvlm_export.parity.split import run_split_parity

    timer = StepTimer("Manifest", log)
    if is_shape_set(manifest_path):  # a split of several shapes: each shape's chain in turn, the weights loaded once
        shape_set = read_shape_set(manifest_path)
        manifests = [shape_set.manifest(i) for i in range(len(shape_set.specs))]
        timer.done(f"{shape_set.path}: {len(manifests)} shapes ({shape_set.listing}); every file's sha256 and metadata agree")
    else:
        manifests = [read_manifest(manifest_path)]
        timer.done(f"{manifests[0].path}: every file's sha256 and every graph's metadata agree")
    if settings.save_dir is not None and len(manifests) > 1:  # every shape's record name checked before any is written
        from flashvlm_export.parity.run import check_save_dir
        from flashvlm_export.parity.split import record_name

        check_save_dir(settings.save_dir, [record_name(m) for m in manifests])
    parts, failed, start, s = None, [], time.perf_counter(), settings
    for manifest in manifests:
        r = manifest.request(manifest.budgets[0])
        check_repeats_fit(settings.repeats, len(PIPELINE_CASES), r.spec, r.tokens, r.t_max, r.batch, False)
        if parts is None:
            parts = get_parts_logged(r.spec, weights.for_artifact(manifest.weights, str(manifest.path)), log)
        parts = replace(parts, spec=r.spec)  # the one model, at this shape
        if len(manifests) > 1:
            log(f"Shape {r.spec.shape_text if r.spec.grid is None else r.spec.label}: {manifest.path.name}")
        reports = run_split_parity(
            manifest, parts, s.corpus_seed, s.repeats, None, s.save_dir, log=log, min_overlap=s.min_overlap, provider=s.provider
        )
        bad = [str(k) for k, report in reports.items() if not report]
        shape = "" if len(manifests) == 1 else f" at {manifest.path.stem.removeprefix('manifest_')}"
        failed += [f"K = {', '.join(bad)}{shape}"] if bad else []
    elapsed = time.perf_counter() - start
    every = "every budget of the chain" + ("" if len(manifests) == 1 else f", at every one of the {len(manifests)} shapes")
    return _verdict(failed, elapsed, f"layers 1 and 2 hold for {every}{settings.gate}", log)
