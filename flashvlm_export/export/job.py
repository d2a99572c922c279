"""An export from checked requests to files: where they go, what is checked before any work, the graphs
(fused, or split with a manifest), then the TensorRT engines built from them."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flashvlm_export.errors import UsageError
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.split import SplitPlan, owned_folder
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.weights import WeightsSource
from flashvlm_export.progress import plural


@dataclass(frozen=True)
class Outputs:
    """Where an export's graphs go: one file per request, or a split's folder (`plan`)."""

    requests: list[ExportRequest]
    graphs: list[Path]  # one per request; for a split, the encoder then each selector
    plan: SplitPlan | None = None  # or a ShapesPlan (export/shapes.py): a split of several shapes

    flag: str = "--out-dir"  # the flags that move these paths: a split's only by --out-dir; one graph by --out too

    @property
    def files(self) -> list[Path]:
        return self.plan.outputs() if self.plan else self.graphs

    @property
    def kinds(self) -> set[str]:
        """The kinds of graph written (export/options.py GRAPH_KINDS); "plugin" where a graph holds --plugin's node."""
        written = [self.plan.encoder, *self.plan.selectors] if self.plan else self.requests
        return {r.kind for r in written} | {"plugin" for r in written if getattr(r, "plugin", False)}


def plan_outputs(
    requests: list[ExportRequest], out_dir: Path, out: str | None = None, split: bool = False, fused: bool = False
) -> Outputs:
    """Split (one encoder, a selector per budget, a manifest) with `split`, and by default for several budgets."""
    from flashvlm_export.artifacts.naming import graph_name
    from flashvlm_export.export.split import split_plan

    if split and fused:
        raise UsageError("--split and --fused exclude each other; pass one")
    selector_only = requests[0].selector_only
    if selector_only and split:
        raise UsageError("--split splits the encoder from the selectors; a --selector-only export has no encoder, drop one")
    if not selector_only and (split or (len(requests) > 1 and not fused)):
        if out is not None:
            raise UsageError(f"--out {out} names one graph; a split export writes a folder: use --out-dir (or --fused)")
        plan = split_plan(requests, out_dir)
        return Outputs(requests, plan.graphs(), plan)
    if out is None:
        flag = "--out-dir" if len(requests) > 1 else "--out-dir (or --out)"
        return Outputs(requests, [out_dir / graph_name(r) for r in requests], flag=flag)
    if len(requests) > 1:
        raise UsageError("--out names one file but --budget lists several; use --out-dir for several budgets")
    if not out.endswith(".onnx"):
        raise UsageError(f"--out {out} must end in .onnx")
    return Outputs(requests, [Path(out)], flag="--out")


class EngineBuilder(Protocol):
    """What an export asks of TensorRT (trt/engines.py EngineJob), so that export/ never imports trt/."""

    def prepare(self, outputs: Outputs) -> list[Path]:
        """Fail fast (TensorRT, the GPU, the plugin) before any graph is exported; the engines' paths."""

    def build(self, requests, graphs: list[Path], engine_paths: list[Path], weights: str | None, log=print) -> dict[str, Path]:
        """One engine per graph; {graph stem: engine path}."""


@dataclass(frozen=True)
class Exported:
    graphs: list[Path]
    engines: list[Path]
    manifest: Path | None  # a split's
    weights: WeightsSource | None  # None for --selector-only graphs


def run_export(
    spec: ModelSpec,
    outputs: Outputs,
    source: WeightsSource | None,
    opset: int,
    exporter: str,
    engines: EngineBuilder | None = None,
    force: bool = False,
    log=print,
) -> Exported:
    """Check everything that can fail early (the exporter against the graphs, weights, TensorRT, the GPU, the
    plugin, every output path), then load the model once, export every graph and build the engines. `source`
    None: selector-only graphs."""
    from flashvlm_export.artifacts.files import artifact_size, human_size
    from flashvlm_export.artifacts.staging import check_writable
    from flashvlm_export.export.graphs import export_logged
    from flashvlm_export.export.options import GRAPH_KINDS, exporter_refusal

    for kind in [k for k in GRAPH_KINDS if k in outputs.kinds]:
        if refusal := exporter_refusal(exporter, kind):
            raise UsageError(refusal)
    if source is not None and not source.random:  # the "no weights" error comes before any "already exists" one
        from flashvlm_export.models.weights import resolve_weights_dir

        resolve_weights_dir(spec, source.path)
    engine_paths = engines.prepare(outputs) if engines is not None else []
    with (
        owned_folder(outputs.plan.folder) if outputs.plan else nullcontext()
    ):  # a split stopped part-way leaves no folder it made
        # each refusal names the flag that moves those files: a split's folder and its engines only by --out-dir
        check_writable(outputs.files, force, log=log, flag=outputs.flag)
        if engine_paths:
            check_writable(engine_paths, force, log=log, flag="--out-dir" if outputs.plan else "--engine-dir")
        if force and outputs.plan:  # a split folder --force writes into holds only this tool's files
            from flashvlm_export.artifacts.ownership import check_folder_replaceable

            check_folder_replaceable(outputs.plan.folder, "--out-dir")
        parts = None
        if source is not None:
            from flashvlm_export.models.adapter import get_parts_logged

            parts = get_parts_logged(spec, source, log)
        weights = None if parts is None else parts.source.tag
        plan, manifest, requests = outputs.plan, None, outputs.requests
        shapes = plan is not None and not isinstance(plan, SplitPlan)
        if shapes:
            from flashvlm_export.export.shapes import export_shapes

            manifest = export_shapes(plan, parts, weights, opset, exporter, overwrite=force, log=log)
            total = sum(artifact_size(g) for g in plan.graphs()) + plan.data.stat().st_size
            log(
                f"Split: wrote {manifest}: {plural(len(plan.plans), 'shape')} ({', '.join(p.tag for p in plan.plans)}), "
                f"each an encoder graph and {plural(len(plan.selectors), 'selector graph')}; {human_size(total)} in all"
            )
            requests = plan.requests()
        elif plan:
            from flashvlm_export.export.split import export_split

            manifest = export_split(plan, parts, weights, opset, exporter, overwrite=force, log=log)
            selectors = sum(artifact_size(plan.selector_graph(r)) for r in plan.selectors)
            log(
                f"Split: wrote {manifest}: one encoder graph ({human_size(artifact_size(plan.encoder_graph))}) and "
                f"{plural(len(plan.selectors), 'selector graph')} (K = {', '.join(r.budget_label for r in plan.selectors)}, "
                f"{human_size(selectors)} together)"
            )
            requests = plan.requests()
        else:
            for request, path in zip(requests, outputs.graphs, strict=True):
                export_logged(request, path, parts, weights, opset, exporter, overwrite=force, log=log)
        if engine_paths:
            built = engines.build(requests, outputs.graphs, engine_paths, weights, log=log)
            if shapes:
                from flashvlm_export.export.shapes import add_shape_engines

                add_shape_engines(plan, built)
            elif plan:
                from flashvlm_export.export.split import add_engines

                add_engines(manifest, built)
                log(f"Split: the manifest lists the {plural(len(built), 'engine')} in {engine_paths[0].parent}")
        return Exported(outputs.graphs, engine_paths, manifest, None if parts is None else parts.source)
