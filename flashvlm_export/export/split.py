"""Split export: one encoder graph, one small selector graph per budget, and the manifest that ties them.

Every file of a split lands together or none does: the graphs are exported into one staging folder
and placed with the manifest in one all-or-nothing step (artifacts/placement.py). Engines, when
asked for, are built afterwards from the placed graphs; the manifest is then rewritten to list them,
so at every moment the manifest describes files that exist.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from flashvlm_export.artifacts.naming import external_data_path, split_stem
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
        return self.folder / f"{selector_stem(request.budget)}.onnx"

    def graphs(self) -> list[Path]:
        return [self.encoder_graph] + [self.selector_graph(r) for r in self.selectors]

    def outputs(self) -> list[Path]:
        """Every file the split writes: graphs, their sidecars, the manifest (and an encoder's external data past 2 GB)."""
        data = [external_data_path(self.encoder_graph)]  # placed only if the export wrote it
        return data + [p for g in self.graphs() for p in (g, sidecar_path(g))] + [self.manifest]

    def engine_folder(self, engine_dir: Path) -> Path:
        return engine_dir / self.folder.name

    def engines(self, engine_dir: Path) -> list[Path]:
        folder = self.engine_folder(engine_dir)
        return [folder / (g.stem + ".plan") for g in self.graphs()]


def split_plan(requests: list[ExportRequest], out_dir: Path) -> SplitPlan:
    """The split of full-graph requests (one per budget, same model/batch/precision/plugin) into `out_dir`."""
    first = requests[0]
    folder = Path(out_dir) / split_stem(first.spec.name, first.batch, first.precision, first.plugin)
    encoder = EncoderRequest(spec=first.spec, batch=first.batch, precision=first.precision)
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
            meta = export_logged(request, staged[graph], parts, own_weights, opset, how, log=log, shown=graph)
            metas[graph.stem] = meta
        files = {g.stem: file_entry(staged[g], staged[g].parent) for g in plan.graphs()}
        selectors_meta = {r.budget: metas[selector_stem(r.budget)] for r in plan.selectors}
        write_manifest(staged[plan.manifest], manifest_record(metas[ENCODER_STEM], selectors_meta, files))
    return plan.manifest


def add_engines(manifest_path: Path, engines: dict[str, Path]) -> None:
    """Rewrite the manifest to list the engines built from its graphs ({"encoder" | "selector_b<K>": plan})."""
    manifest = read_manifest(manifest_path, verify=False)
    record, root = manifest.record, manifest.folder
    record["encoder"]["engine"] = file_entry(engines[ENCODER_STEM], root)
    for selector in record["selectors"]:
        selector["engine"] = file_entry(engines[selector_stem(selector["budget"])], root)
    with atomic_outputs([manifest_path], overwrite=True) as (temp,):
        write_manifest(temp, record)
