"""Split export: one encoder graph, one small selector graph per budget (or one for a budget range), and the manifest
that ties them.

Every file of a split lands together or none does: the graphs are exported into one staging folder
and placed with the manifest in one all-or-nothing step (artifacts/placement.py); only then is each
announced as saved. Engines, when asked for, are built afterwards from the placed graphs into the
split's own `engines/` folder (a manifest names only files inside its folder: artifact_paths); the
manifest is then rewritten to list them, so at every moment the manifest describes files that exist.
A split stopped part-way (Ctrl-C, SIGTERM, an error) removes the folders it created (`owned_folder`).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from flashvlm_export.artifacts.files import artifact_size, human_size
from flashvlm_export.artifacts.naming import clip_label, external_data_path, split_stem
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.artifacts.sidecar import sidecar_path
from flashvlm_export.export.graphs import EncoderRequest, ExportRequest, export_logged
from flashvlm_export.export.manifest import (
    ENCODER_STEM,
    MANIFEST_NAME,
    file_entry,
    manifest_record,
    read_manifest,
    selector_stem,
    write_manifest,
)

ENGINES_FOLDER = "engines"


@dataclass(frozen=True)
class SplitPlan:
    folder: Path
    encoder: EncoderRequest
    selectors: tuple[ExportRequest, ...]  # one per budget, selector graphs (with step 12's gather)
    tag: str = ""  # one shape of a split of several (export/shapes.py): its key ends each file's name

    def _named(self, stem: str) -> str:
        return f"{stem}_{self.tag}" if self.tag else stem

    @property
    def manifest(self) -> Path:
        return self.folder / (f"{self._named(Path(MANIFEST_NAME).stem)}.json" if self.tag else MANIFEST_NAME)

    @property
    def encoder_graph(self) -> Path:
        return self.folder / f"{self._named(ENCODER_STEM)}.onnx"

    def selector_graph(self, request: ExportRequest) -> Path:
        return self.folder / f"{self._named(selector_stem(request.budget, request.budget_min))}.onnx"

    def graphs(self) -> list[Path]:
        return [self.encoder_graph] + [self.selector_graph(r) for r in self.selectors]

    def requests(self) -> list:
        """The request of each graph, in graphs' order."""
        return [self.encoder, *self.selectors]

    def outputs(self) -> list[Path]:
        """Every file the split writes: graphs, their sidecars, the manifest (and an encoder's external data past 2 GB)."""
        data = [external_data_path(self.encoder_graph)]  # placed only if the export wrote it
        return data + [p for g in self.graphs() for p in (g, sidecar_path(g))] + [self.manifest]

    @property
    def engine_folder(self) -> Path:
        """The split's engines and their sidecars: inside its folder (the manifest names nothing outside it), in a
        subfolder of their own (an engine's sidecar X.json would otherwise take its graph's sidecar name)."""
        return self.folder / ENGINES_FOLDER

    def engines(self) -> list[Path]:
        return [self.engine_folder / (g.stem + ".plan") for g in self.graphs()]


def split_plan(requests: list[ExportRequest], out_dir: Path, tag: str = "", folder: Path | None = None) -> SplitPlan:
    """The split of full-graph requests (one per budget, same model/batch/precision/plugin) into `out_dir` (or into
    `folder`, as one shape `tag` of a split of several)."""
    first = requests[0]
    if folder is None:
        folder = Path(out_dir) / split_stem(first.spec.label, first.batch, first.precision, first.plugin, clip_label(first))
    encoder = EncoderRequest(
        spec=first.spec, batch=first.batch, precision=first.precision, frames=first.frames, calibration=first.calibration
    )
    selectors = tuple(replace(r, selector_only=True, precision="fp32", calibration=None) for r in requests)
    return SplitPlan(folder, encoder, selectors, tag)


def export_split(
    plan: SplitPlan,
    parts,
    weights: str | None,
    opset: int,
    exporter: str,
    *,
    overwrite: bool,
    log=print,
    selector_exporter: str | None = None,
) -> Path:
    """Write the split's graphs, sidecars and manifest, all or nothing; returns the manifest's path.

    `selector_exporter` exports the selectors with another exporter than the encoder (bench: TorchScript
    writes the same selector graph in seconds; CLIP's embeddings need dynamo).
    """
    plan.folder.mkdir(parents=True, exist_ok=True)
    finals = plan.outputs()
    with atomic_outputs(finals, overwrite=overwrite) as temps:
        staged = dict(zip(finals, temps, strict=True))
        metas = export_plan_graphs(plan, staged, parts, weights, opset, exporter, log, selector_exporter)
        write_plan_manifest(plan, staged, metas)
    for graph in plan.graphs():  # announced only now: every file is in place
        log(f"ONNX: saved as '{graph}' ({human_size(artifact_size(graph))})")
    return plan.manifest


def export_plan_graphs(plan: SplitPlan, staged: dict, parts, weights, opset, exporter, log, selector_exporter=None) -> dict:
    """Export the plan's graphs to their staged paths; each graph's metadata by its manifest key (encoder,
    selector_b<K>)."""
    metas = {}
    for request, graph in [(plan.encoder, plan.encoder_graph)] + [(r, plan.selector_graph(r)) for r in plan.selectors]:
        # selector graphs hold no weights: the encoder and the manifest record whose they are
        own_weights = weights if request.kind == "encoder" else None
        how = exporter if request.kind == "encoder" else selector_exporter or exporter
        cache = plan.folder / f"{graph.stem}.calib.json"  # beside the placed graph: a later export reuses it
        meta = export_logged(request, staged[graph], parts, own_weights, opset, how, log=log, staged=True, calib_cache=cache)
        metas[ENCODER_STEM if request.kind == "encoder" else selector_stem(request.budget, request.budget_min)] = meta
    return metas


def write_plan_manifest(plan: SplitPlan, staged: dict, metas: dict, shared: dict | None = None) -> None:
    """The plan's manifest, from its staged graphs as they now are (hashes) and their metadata; `shared`: the file
    entry of the weights its encoder reads from a split of several shapes' shared file (export/shapes.py)."""
    files = {ENCODER_STEM: file_entry(staged[plan.encoder_graph], staged[plan.encoder_graph].parent)}
    for r in plan.selectors:
        files[selector_stem(r.budget, r.budget_min)] = file_entry(
            staged[plan.selector_graph(r)], staged[plan.encoder_graph].parent
        )
    selectors_meta = {r.budget: metas[selector_stem(r.budget, r.budget_min)] for r in plan.selectors}
    record = manifest_record(metas[ENCODER_STEM], selectors_meta, files)
    if shared is not None:
        record["shared_weights"] = shared
    write_manifest(staged[plan.manifest], record)


def _created_by(folder: Path) -> Path | None:
    """The topmost folder on the way to `folder` that does not exist yet (what making it would create)."""
    top = None
    for candidate in [folder, *folder.parents]:
        if os.path.lexists(candidate):
            break
        top = candidate
    return top


@contextmanager
def owned_folder(folder: Path):
    """Around a split export: if it stops part-way (Ctrl-C, SIGTERM, any error), the folders it created go too.

    Only a folder that did not exist when the export began is removed; one that was there is left as it is
    (the all-or-nothing placement already kept the files in it unchanged).
    """
    top = _created_by(Path(folder).absolute())
    try:
        yield
    except BaseException:
        if top is not None and top.is_dir() and not top.is_symlink():
            shutil.rmtree(top, ignore_errors=True)
        raise


def add_engines(manifest_path: Path, engines: dict[str, Path]) -> None:
    """Rewrite the manifest to list the engines built from its graphs ({graph stem: plan}: encoder, selector_b<K>, or
    with a shape's tag, encoder_364x504)."""
    manifest = read_manifest(manifest_path, verify=False)
    record, root = manifest.record, manifest.folder
    for entry in [record["encoder"], *record["selectors"]]:
        entry["engine"] = file_entry(engines[Path(entry["onnx"]["path"]).stem], root)
    with atomic_outputs([manifest_path], overwrite=True) as (temp,):
        write_manifest(temp, record)
