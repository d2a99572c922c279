"""The manifest of a split export: the one file that ties one encoder graph to its selector graphs.

A split export (`flashvlm-export --budget 128,64,32 --split`) writes a folder:

    llava15_split/
      encoder.onnx (+ encoder.json)          pixel_values -> X, a, P(X)
      selector_b128.onnx (+ .json), ...      X, a, P(X), T, mask -> indices, visual_embeds
      manifest.json                          this record

The manifest names the model, the weights identity, the budgets, T_max, batch, precision, plugin and
the selector hyperparameters, and each file (paths relative to the manifest) with its sha256 and
size; with `--engine`, also each engine. Reading it checks every file's hash and that every graph's
own metadata says what the manifest says, so a user can pass the manifest around and every tool
(`run --manifest`, `parity --manifest`, the runtimes) refuses a folder that was edited or mixed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import BOUNDS, named_file, own_file, read_bounded
from flashvlm_export.artifacts.files import sha256_of
from flashvlm_export.artifacts.ownership import PRODUCER
from flashvlm_export.errors import UsageError, arg
from flashvlm_export.export.metadata import graph_metadata, typed_values

MANIFEST_NAME = "manifest.json"
FORMAT = "flashvlm-export split"
FORMAT_VERSION = 1
ENCODER_STEM = "encoder"


def selector_stem(budget: int, budget_min: int | None = None) -> str:
    """selector_b128, or selector_b16-256 for a budget-range selector."""
    return f"selector_b{budget}" if budget_min is None else f"selector_b{budget_min}-{budget}"


def entry_stem(entry: dict) -> str:
    """The stem of a manifest's selector entry."""
    return selector_stem(entry["budget"], entry.get("budget_min"))


def file_entry(path: Path, root: Path) -> dict:
    """A file as the manifest records it: path relative to the manifest's folder, sha256, bytes."""
    return {"path": os.path.relpath(path, root), "sha256": sha256_of(path), "bytes": path.stat().st_size}


def manifest_record(encoder_meta: dict[str, str], selectors_meta: dict[int, dict[str, str]], files: dict[str, dict]) -> dict:
    """The manifest from the graphs' own metadata; `files` maps "encoder" and "selector_b<K>" to file entries.

    A budget-range selector (one, keyed by its KMAX) adds "budget_range": [KMIN, KMAX] and its entry's "budget_min";
    "budgets" lists each selector graph's K (a range selector's: KMAX, the width of its outputs).
    """
    encoder, first = typed_values(encoder_meta), typed_values(selectors_meta[min(selectors_meta)])
    lows = {k: typed_values(m).get("budget_min") for k, m in selectors_meta.items()}
    ranged = {k: low for k, low in lows.items() if low is not None}
    entries = []
    for k in sorted(selectors_meta, reverse=True):
        entry = {"budget": k, "onnx": files[selector_stem(k, lows[k])], "engine": None}
        if lows[k] is not None:
            entry["budget_min"] = lows[k]
        entries.append(entry)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "producer": PRODUCER,
        "flashvlm_export_version": encoder_meta.get("flashvlm_export_version"),
        "model": encoder_meta["model"],
        "weights": encoder_meta.get("weights"),  # a tag or a path, kept as written
        "budgets": sorted(selectors_meta, reverse=True),
        "t_max": first["t_max"],
        "batch": encoder["batch"],
        "n_tokens": encoder["n_tokens"],
        "precision": encoder_meta.get("precision", "fp32"),
        "plugin": first.get("plugin", False),
        "selector_config": first["selector_config"],
        "opset": encoder.get("opset"),
        "encoder": {"onnx": files[ENCODER_STEM], "engine": None},
        "selectors": entries,
    }
    if ranged:
        ((k_max, k_min),) = ranged.items()  # a split writes one range selector, or fixed ones only
        record["budget_range"] = [k_min, k_max]
    return record


@dataclass(frozen=True)
class Manifest:
    path: Path
    record: dict

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def budgets(self) -> tuple[int, ...]:
        """Each selector graph's K (a budget-range selector's KMAX): the keys of selector_graph, request, engines."""
        return tuple(self.record["budgets"])

    @property
    def budget_range(self) -> tuple[int, int] | None:
        """(KMIN, KMAX) of a budget-range split, whose one selector serves every budget in it; None otherwise."""
        found = self.record.get("budget_range")
        return None if found is None else (found[0], found[1])

    @property
    def serves(self) -> str:
        """The budgets a request may ask for, as a message shows them."""
        if self.budget_range is not None:
            return f"any K in {self.budget_range[0]}..{self.budget_range[1]}"
        return "K = " + ", ".join(str(k) for k in self.budgets)

    def _file(self, entry: dict, what: str, kind: str = "graph") -> Path:
        """A file the manifest names, by the rule of artifact_paths: inside its folder, regular, its recorded size."""
        where = (
            "copy the whole split folder (its engines/ too), or run in ONNX Runtime"
            if kind == "engine"
            else "copy the whole split folder"
        )
        return named_file(self.path, self.folder, entry["path"], what, kind, expect_bytes=entry.get("bytes"), fix=where)

    @property
    def encoder_graph(self) -> Path:
        return self._file(self.record["encoder"]["onnx"], f"{ENCODER_STEM} graph")

    def selector_graph(self, budget: int) -> Path:
        entry = self._selector(budget)
        return self._file(entry["onnx"], f"{entry_stem(entry)} graph")

    def engines(self) -> tuple[Path, dict[int, Path]]:
        """The encoder engine and each budget's; a one-line error when the manifest lists none."""
        encoder = self.record["encoder"].get("engine")
        if encoder is None or any(s.get("engine") is None for s in self.record["selectors"]):
            raise UsageError(
                f"{self.path} lists no TensorRT engines; build them with flashvlm-export ... --split --engine, "
                "or run the graphs in ONNX Runtime"
            )
        selectors = {s["budget"]: self._file(s["engine"], f"{entry_stem(s)} engine", "engine") for s in self.record["selectors"]}
        return self._file(encoder, f"{ENCODER_STEM} engine", "engine"), selectors

    def _selector(self, budget: int) -> dict:
        for entry in self.record["selectors"]:
            if entry["budget"] == budget:
                return entry
        raise UsageError(
            f"{arg('budget', budget)} is not in {self.path}: it has {self.serves}; ask for one of those or re-export"
        )

    def request(self, budget: int):
        """The budget's ExportRequest as a full pipeline (the chain end to end), from its selector graph's metadata."""
        from dataclasses import replace

        from flashvlm_export.export.graphs import request_from_metadata

        graph = self.selector_graph(budget)
        selector = request_from_metadata(graph_metadata(graph), str(graph))
        return replace(selector, selector_only=False, precision=self.record["precision"])

    def check_budget(self, budget: int) -> int:
        """The key (a selector graph's K) of the selector that serves `budget`; a one-line error when none does."""
        if self.budget_range is not None:
            k_min, k_max = self.budget_range
            if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not k_min <= budget <= k_max:
                raise UsageError(
                    f"{arg('budget', budget)} is outside {self.path}'s range: it serves {self.serves}; ask for one in it"
                )
            return k_max
        self._selector(budget)
        return budget

    @property
    def weights(self) -> str | None:
        return self.record.get("weights")


def _fail(path: Path, what: str) -> UsageError:
    return UsageError(f"{path} {what}; re-export the split with flashvlm-export ... --split")


def read_manifest(path: Path, verify: bool = True, engines: bool = False) -> Manifest:
    """Load and check a manifest: its shape, every listed graph present with its sha256 (verify=True), and the
    graphs' own metadata equal to what the manifest says; with engines=True, also every listed engine (they
    live in another folder: a copy of the split folder alone still runs in ONNX Runtime). Any failure is a
    one-line UsageError."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    own_file(path, "manifest", "json", "write one with flashvlm-export ... --split")
    try:
        record = json.loads(read_bounded(path, BOUNDS["json"]))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise _fail(path, f"is not readable JSON ({type(exc).__name__})") from None
    if isinstance(record, dict) and record.get("format") == "flashvlm-export shapes":  # export/shapes.py
        shapes = [s.get("manifest", {}).get("path", "?") for s in record.get("shapes", []) if isinstance(s, dict)]
        raise UsageError(
            f"{path} is a split of several shapes ({len(shapes)}): run --manifest and parity --manifest take it whole; "
            f"for this command name one shape's manifest, e.g. {path.parent / shapes[0] if shapes else 'manifest_<shape>.json'}"
        )
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise _fail(path, f'is not a flashvlm-export split manifest (no "format": "{FORMAT}")')
    if record.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"has format_version {record.get('format_version')!r}; this flashvlm-export reads {FORMAT_VERSION}")
    try:
        manifest = _checked_shape(path, record)
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(path, f"is malformed ({type(exc).__name__}: {str(exc)[:80]})") from None
    entries = [(manifest.record["encoder"], ENCODER_STEM)] + [(s, entry_stem(s)) for s in record["selectors"]]
    for entry, name in entries:
        _check_file(manifest, entry["onnx"], f"{name} graph", verify)
        if engines and entry.get("engine") is not None:
            _check_file(manifest, entry["engine"], f"{name} engine", verify)
    if record.get("shared_weights") is not None:  # one shape of a split of several: the weights its encoder reads
        _check_file(manifest, record["shared_weights"], "shared weights", verify, "data")
    if verify:
        _check_graph_metadata(manifest)
    return manifest


FIELDS = {  # every key the tools read, and its type
    "model": str,
    "weights": (str, type(None)),
    "budgets": list,
    "t_max": int,
    "batch": int,
    "n_tokens": int,
    "precision": str,
    "plugin": bool,
    "selector_config": dict,
    "encoder": dict,
    "selectors": list,
}


def _checked_shape(path: Path, record: dict) -> Manifest:
    for key, kind in FIELDS.items():
        if not isinstance(record[key], kind):
            raise TypeError(f"{key} is {type(record[key]).__name__}")
    for entry in [record["encoder"], *record["selectors"]]:
        if not isinstance(entry, dict) or not isinstance(entry["onnx"], dict):
            raise TypeError("each graph entry needs an onnx record")
        if not isinstance(entry.get("engine"), (dict, type(None))):
            raise TypeError("an engine entry must be a record or null")
        for file in (entry["onnx"], entry.get("engine")):
            if file is not None and not (isinstance(file.get("path"), str) and isinstance(file.get("sha256"), str)):
                raise TypeError("each file needs a path and a sha256")
            if file is not None and type(file.get("bytes", 0)) is not int:
                raise TypeError("a file's bytes must be a whole number")
    budgets = record["budgets"]
    if not budgets or any(isinstance(k, bool) or not isinstance(k, int) for k in budgets):
        raise ValueError("budgets must be a non-empty list of whole numbers")
    listed = [s["budget"] for s in record["selectors"]]
    if sorted(listed) != sorted(budgets) or len(set(listed)) != len(listed):
        raise ValueError(f"selectors list K = {listed}, budgets say {budgets}")
    lows = [s.get("budget_min") for s in record["selectors"]]
    span = record.get("budget_range")
    if span is not None or any(low is not None for low in lows):
        if not (isinstance(span, list) and len(span) == 2 and all(type(k) is int for k in span) and len(listed) == 1):
            raise ValueError("budget_range must be [KMIN, KMAX] of the one selector")
        if [lows[0], listed[0]] != span or span[0] >= span[1]:
            raise ValueError(f"budget_range {span} is not the selector's {lows[0]}..{listed[0]}")
    return Manifest(path, record)


def _check_file(manifest: Manifest, entry: dict, what: str, verify: bool, kind: str | None = None) -> None:
    kind = kind or ("engine" if what.endswith("engine") else "graph")
    target = manifest._file(entry, what, kind)  # the rule, before hashing
    if verify and sha256_of(target) != entry["sha256"]:
        raise UsageError(
            f"{target} is not the {what} {manifest.path} lists (sha256 differs): it was changed or replaced; "
            "re-export the split with flashvlm-export ... --split"
        )


def _check_graph_metadata(manifest: Manifest) -> None:
    """Each graph's own metadata must say what the manifest says (a manifest edited by hand is refused)."""
    r = manifest.record
    encoder = graph_metadata(manifest.encoder_graph)
    want = {"graph": "encoder", "model": r["model"], "batch": str(r["batch"]), "precision": r["precision"]}
    want["n_tokens"] = str(r["n_tokens"])
    if r.get("weights") is not None:
        want["weights"] = r["weights"]
    _compare(manifest, manifest.encoder_graph, encoder, want)
    for entry in r["selectors"]:
        k = entry["budget"]
        graph = manifest.selector_graph(k)
        want = {
            "graph": "selector",
            "model": r["model"],
            "budget": str(k),
            "batch": str(r["batch"]),
            "t_max": str(r["t_max"]),
            "n_tokens": str(r["n_tokens"]),
            "plugin": str(int(r["plugin"])),
            "budget_min": None if entry.get("budget_min") is None else str(entry["budget_min"]),
        }
        meta = graph_metadata(graph)
        _compare(manifest, graph, meta, want)
        try:
            config = json.loads(meta.get("selector_config", "null"))
        except ValueError:
            config = None
        if config != r["selector_config"]:
            raise _fail(manifest.path, f"says selector_config {r['selector_config']}, {graph.name} was exported with {config}")


def _compare(manifest: Manifest, graph: Path, meta: dict[str, str], want: dict[str, str]) -> None:
    def shown(value) -> str:  # a hand-edited value may be huge: one line stays short
        text = repr(value)
        return text if len(text) <= 80 else text[:77] + "..."

    differ = [f"{key} {shown(meta.get(key))} (manifest: {shown(value)})" for key, value in want.items() if meta.get(key) != value]
    if differ:
        raise _fail(manifest.path, f"does not match {graph.name}: the graph says {'; '.join(differ)}")


def write_manifest(path: Path, record: dict) -> None:
    path.write_text(json.dumps(record, indent=2, sort_keys=False, allow_nan=False) + "\n")
