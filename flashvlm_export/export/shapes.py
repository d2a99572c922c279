"""A split of several shapes (--aspects): one folder, a split per shape, the encoder's weights stored once.

    qwen2.5-vl-7b_aspects_split/
      manifest.json                              this record: the shapes, each shape's manifest, the shared weights
      encoder_weights.data                       every encoder's weights, each distinct tensor once (shared_weights.py)
      encoder_448.onnx, selector_b64_448.onnx, manifest_448.json, ...          the square (its own split manifest)
      encoder_364x504.onnx, selector_b64_364x504.onnx, manifest_364x504.json   4:3, ...

Each shape's manifest is an ordinary split manifest (export/manifest.py): every tool that takes one takes it. The
top manifest (format "flashvlm-export shapes") lists the shapes by key (models/shapes.py shape_key) with each one's
manifest (sha256) and the shared weights file; `run --manifest` picks a shape per photo (choose_shape), `parity
--manifest` checks every shape, the Triton entry model routes each request to its shape. Everything lands together
or nothing does (one atomic placement); the encoders' weights are moved into the shared file while staged, before
any hash is taken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from flashvlm_export.artifact_paths import BOUNDS, SHARED_DATA, read_bounded
from flashvlm_export.artifacts.files import artifact_size, human_size, sha256_of
from flashvlm_export.artifacts.ownership import PRODUCER
from flashvlm_export.artifacts.placement import atomic_outputs
from flashvlm_export.errors import UsageError
from flashvlm_export.export.manifest import MANIFEST_NAME, Manifest, file_entry, read_manifest, write_manifest
from flashvlm_export.export.split import SplitPlan, export_plan_graphs, split_plan, write_plan_manifest
from flashvlm_export.models.shapes import shape_key

FORMAT = "flashvlm-export shapes"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShapesPlan:
    folder: Path
    plans: tuple[SplitPlan, ...]  # one per shape, each tagged with its key

    @property
    def manifest(self) -> Path:
        return self.folder / MANIFEST_NAME

    @property
    def data(self) -> Path:
        return self.folder / SHARED_DATA

    @property
    def encoder(self):
        return self.plans[0].encoder

    @property
    def selectors(self):
        return self.plans[0].selectors

    @property
    def engine_folder(self) -> Path:
        return self.plans[0].engine_folder

    def graphs(self) -> list[Path]:
        return [g for p in self.plans for g in p.graphs()]

    def requests(self) -> list:
        return [r for p in self.plans for r in p.requests()]

    def outputs(self) -> list[Path]:
        return [self.data] + [f for p in self.plans for f in p.outputs()] + [self.manifest]

    def engines(self) -> list[Path]:
        return [e for p in self.plans for e in p.engines()]


def shapes_plan(shape_requests: list[list], out_dir: Path) -> ShapesPlan:
    """The split of several shapes: `shape_requests` holds each shape's full-graph requests (the same budgets)."""
    from flashvlm_export.artifacts.naming import clip_label, split_stem

    first = shape_requests[0][0]
    folder = Path(out_dir) / split_stem(
        f"{first.spec.name}_aspects", first.batch, first.precision, first.plugin, clip_label(first)
    )
    plans = tuple(split_plan(requests, out_dir, shape_key(requests[0].spec), folder) for requests in shape_requests)
    return ShapesPlan(folder, plans)


def export_shapes(plan: ShapesPlan, parts, weights, opset: int, exporter: str, *, overwrite: bool, log=print) -> Path:
    """Every shape's graphs and manifest, the shared weights and the top manifest, all or nothing; the top manifest."""
    from flashvlm_export.artifacts.shared_weights import share_weights

    plan.folder.mkdir(parents=True, exist_ok=True)
    finals = plan.outputs()
    with atomic_outputs(finals, overwrite=overwrite) as temps:
        staged = dict(zip(finals, temps, strict=True))
        metas = [export_plan_graphs(p, staged, parts, weights, opset, exporter, log) for p in plan.plans]
        shared = share_weights([staged[p.encoder_graph] for p in plan.plans], staged[plan.data])
        log(
            f"Shapes: {len(plan.plans)} encoders share one weights file ({human_size(shared['bytes'])}; "
            f"{human_size(shared['saved_bytes'])} of copies not written)"
        )
        data = file_entry(staged[plan.data], staged[plan.data].parent)  # each shape's manifest checks it too
        for p, meta in zip(plan.plans, metas, strict=True):
            write_plan_manifest(p, staged, meta, data)
        write_manifest(staged[plan.manifest], shapes_record(plan, staged))
    if overwrite:
        _drop_stale(plan, finals, log)
    for graph in plan.graphs():
        log(f"ONNX: saved as '{graph}' ({human_size(artifact_size(graph))})")
    return plan.manifest


def _drop_stale(plan: ShapesPlan, finals: list[Path], log) -> None:
    """--force over an earlier split of other shapes: its files this split does not write (their graphs would read
    offsets of the old shared weights) are removed once the new split is in place; only this tool's files."""
    from flashvlm_export.artifacts.naming import STAGING_PREFIX
    from flashvlm_export.artifacts.ownership import LEDGER, is_own

    keep = {Path(p).absolute() for p in finals}
    stale = [
        path
        for path in sorted(plan.folder.iterdir())
        if path.is_file() and not path.is_symlink() and path.absolute() not in keep
        and not path.name.startswith(STAGING_PREFIX) and path.name != LEDGER and not path.name.endswith(".calib.json")
        and is_own(path)
    ]  # fmt: skip
    for path in stale:
        path.unlink()
    if stale:
        log(f"Shapes: removed {len(stale)} files of the split this one replaced ({', '.join(p.name for p in stale[:4])}...)")


def shapes_record(plan: ShapesPlan, staged: dict | None = None) -> dict:
    """The top manifest from the shapes' manifests (staged: where they are now)."""
    staged = staged or {}
    where = lambda path: staged.get(path, path)  # noqa: E731
    root = where(plan.manifest).parent
    shapes = []
    for p in plan.plans:
        spec = p.encoder.spec
        record = json.loads(where(p.manifest).read_text())
        shapes.append(
            {
                "shape": p.tag,
                "image_size": spec.shape_text,
                "grid": None if spec.grid is None else f"{spec.grid[0]}x{spec.grid[1]}",
                "n_tokens": record["n_tokens"],
                "manifest": file_entry(where(p.manifest), root),
            }
        )
        first = record
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": PRODUCER,
        "flashvlm_export_version": first.get("flashvlm_export_version"),
        "model": first["model"],
        "weights": first.get("weights"),
        "budgets": first["budgets"],
        "shapes": shapes,
        "shared_weights": file_entry(where(plan.data), root),
    }


def add_shape_engines(plan: ShapesPlan, built: dict[str, Path]) -> None:
    """Each shape's manifest lists its engines, then the top manifest its shapes' new manifests."""
    from flashvlm_export.export.split import add_engines

    for p in plan.plans:
        add_engines(p.manifest, built)
    with atomic_outputs([plan.manifest], overwrite=True) as (temp,):
        write_manifest(temp, shapes_record(plan))


@dataclass(frozen=True)
class ShapeSet:
    """A checked top manifest: the shapes' specs, in the order listed, and each shape's own manifest."""

    path: Path
    record: dict
    specs: tuple  # ModelSpec per shape
    manifests: tuple[Path, ...]
    checked: dict = field(default_factory=dict, compare=False)  # index -> Manifest read_shape_set verified (graphs)

    @property
    def keys(self) -> list[str]:
        return [s["shape"] for s in self.record["shapes"]]

    @property
    def listing(self) -> str:
        return ", ".join(self.keys)

    def manifest(self, index: int, engines: bool = False, verify: bool = True) -> Manifest:
        """Shape `index`'s manifest, checked: the one read_shape_set verified, unless its engines are asked for too."""
        if not engines and index in self.checked:
            return self.checked[index]
        manifest = read_manifest(self.manifests[index], verify=verify, engines=engines)
        if verify and not engines:
            self.checked[index] = manifest
        return manifest


def is_shape_set(path: Path) -> bool:
    """Whether `path` (a manifest or its folder) is a top manifest of several shapes."""
    path = Path(path)
    path = path / MANIFEST_NAME if path.is_dir() else path
    try:
        record = json.loads(read_bounded(path, BOUNDS["json"]))
    except (OSError, ValueError, UnicodeDecodeError, UsageError):  # read_manifest then says what is wrong with it
        return False
    return isinstance(record, dict) and record.get("format") == FORMAT


def read_shape_set(path: Path, verify: bool = True) -> ShapeSet:
    """Load and check a top manifest: its shape, the shared weights' and each shape manifest's sha256 (verify), each
    shape manifest's model and shape as listed. Any failure is one line."""
    from flashvlm_export.artifact_paths import named_file
    from flashvlm_export.models.registry import get_spec

    path = Path(path)
    path = path / MANIFEST_NAME if path.is_dir() else path
    fail = lambda what: UsageError(f"{path} {what}; re-export it with flashvlm-export ... --split --aspects")  # noqa: E731
    try:
        record = json.loads(read_bounded(path, BOUNDS["json"]))
        if record.get("format_version") != FORMAT_VERSION:
            raise fail(f"has format_version {record.get('format_version')!r}; this flashvlm-export reads {FORMAT_VERSION}")
        base = get_spec(record["model"])
        specs, manifests, seen = [], [], set()
        for shape in record["shapes"]:
            spec = base.at_grid(shape["grid"], "grid") if shape["grid"] else base.at_image_size(shape["image_size"], "image_size")
            if shape["shape"] != shape_key(spec) or shape["shape"] in seen:
                raise ValueError(f"shape {shape['shape']!r} repeated or not its own key")
            seen.add(shape["shape"])
            entry = shape["manifest"]
            target = named_file(path, path.parent, entry["path"], f"manifest of shape {shape['shape']}", "json",
                                expect_bytes=entry.get("bytes"), fix="copy the whole split folder")  # fmt: skip
            if verify and sha256_of(target) != entry["sha256"]:
                raise fail(f"lists {target.name} with another sha256: it was changed or replaced")
            specs.append(spec)
            manifests.append(target)
        data = record["shared_weights"]
        target = named_file(path, path.parent, data["path"], "shared weights", "data", expect_bytes=data.get("bytes"),
                            fix="copy the whole split folder")  # fmt: skip
        if verify and sha256_of(target) != data["sha256"]:
            raise fail(f"lists {target.name} with another sha256: it was changed or replaced")
    except UsageError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise fail(f"is malformed ({type(exc).__name__}: {str(exc)[:80]})") from None
    if len(specs) < 2:
        raise fail("lists fewer than two shapes")
    shape_set = ShapeSet(path, record, tuple(specs), tuple(manifests))
    if verify:
        from flashvlm_export.export.metadata import graph_metadata

        for i, spec in enumerate(specs):
            manifest = shape_set.manifest(i)
            meta = graph_metadata(manifest.encoder_graph)
            own = (meta.get("model"), meta.get("image_size"), meta.get("grid"))
            if own != (record["model"], spec.shape_text, record["shapes"][i]["grid"]):
                raise fail(f"says shape {shape_set.keys[i]} but {manifest.path.name}'s encoder is {own}")
    return shape_set
