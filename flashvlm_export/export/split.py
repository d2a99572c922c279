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
    entry_stem,
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

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def encoder_graph(self) -> Path:
        return self.folder / f"{ENCODER_STEM}.onnx"

    def selector_graph(self, request: ExportRequest) -> Path:
        return self.folder / f"{selector_stem(request.budget, request.budget_min)}.onnx"

    def graphs(self) -> list[Path]:
        return [self.encoder_graph] + [self.selector_graph(r) for r in self.selectors]

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


def split_plan(requests: list[ExportRequest], out_dir: Path) -> SplitPlan:
    """The split of full-graph requests (one per budget, same model/batch/precision/plugin) into `out_dir`."""
    first = requests[0]
    folder = Path(out_dir) / split_stem(first.spec.label, first.batch, first.precision, first.plugin, clip_label(first))
    encoder = EncoderRequest(spec=first.spec, batch=first.batch, precision=first.precision, frames=first.frames)
    selectors = tuple(replace(r, selector_only=True, precision="fp32") for r in requests)
    return SplitPlan(folder, encoder, selectors)


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
        metas = {}
        for request, graph in [(plan.encoder, plan.encoder_graph)] + [(r, plan.selector_graph(r)) for r in plan.selectors]:
            # selector graphs hold no weights: the encoder and the manifest record whose they are
            own_weights = weights if request.kind == "encoder" else None
            how = exporter if request.kind == "encoder" else selector_exporter or exporter
            meta = export_logged(request, staged[graph], parts, own_weights, opset, how, log=log, staged=True)
            metas[graph.stem] = meta
        files = {g.stem: file_entry(staged[g], staged[g].parent) for g in plan.graphs()}
        selectors_meta = {r.budget: metas[selector_stem(r.budget, r.budget_min)] for r in plan.selectors}
        write_manifest(staged[plan.manifest], manifest_record(metas[ENCODER_STEM], selectors_meta, files))
    for graph in plan.graphs():  # announced only now: every file is in place
        log(f"ONNX: saved as '{graph}' ({human_size(artifact_size(graph))})")
    return plan.manifest


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
    """Rewrite the manifest to list the engines built from its graphs ({"encoder" | "selector_b<K>": plan})."""
    manifest = read_manifest(manifest_path, verify=False)
    record, root = manifest.record, manifest.folder
    record["encoder"]["engine"] = file_entry(engines[ENCODER_STEM], root)
    for selector in record["selectors"]:
        selector["engine"] = file_entry(engines[entry_stem(selector)], root)
    with atomic_outputs([manifest_path], overwrite=True) as (temp,):
        write_manifest(temp, record)
