"""What --force may replace: only what this tool wrote (docs/ARTIFACTS.md, "What --force replaces").

A file is this tool's own when it carries the tool's stamp in its own format:

  .onnx             metadata_props "producer" = flashvlm-export
  .json             a top-level "producer": "flashvlm-export" (sidecars, manifests, reports)
  .plan             its sidecar (X.plan -> X.json) is this tool's, names it and says built_by flashvlm-export
  .onnx.data        the external data of a graph beside it that is this tool's and keeps its tensors there
  .data             a split's shared encoder weights, which the folder's manifest.json (this tool's) lists
  .blob             OpenVINO's compiled-model cache, in an openvino_cache/ folder this tool made (its mark file)
  .gguf             the key flashvlm_export.producer
  .png              a tEXt chunk Software = flashvlm-export
  .mp4 .mkv .avi    the container's comment tag

or when its folder's ledger (LEDGER, written where the tool writes files that cannot carry a stamp: Polygraphy
records, Markdown, row lists, a Triton repository) lists it at the size and modification time it was written with.
Anything else at an output path, a symbolic link included, is the user's: --force refuses it in one line and
replaces nothing. A folder --force may replace whole (a Triton repository) must be empty, or hold this tool's ledger
listing every file in it, unchanged.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

from flashvlm_export.artifact_paths import BOUNDS, read_bounded
from flashvlm_export.artifacts.naming import OPENVINO_CACHE, OPENVINO_CACHE_MARK, STAGING_PREFIX, external_data_path
from flashvlm_export.artifacts.sidecar import sidecar_path
from flashvlm_export.errors import UsageError, switch

PRODUCER = "flashvlm-export"
LEDGER = ".flashvlm-export.json"  # the files this tool wrote into a folder: {"producer", "files": {relpath: [bytes, mtime_ns]}}
GGUF_KEY = "flashvlm_export.producer"
PNG_KEY = "Software"
VIDEO_KEY = "comment"


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _json_record(path: Path):
    try:
        return json.loads(read_bounded(path, BOUNDS["json"]))
    except (OSError, UsageError, UnicodeDecodeError, ValueError):
        return None


def _stamped_json(path: Path) -> bool:
    record = _json_record(path)
    return isinstance(record, dict) and record.get("producer") == PRODUCER


def _own_graph(path: Path):
    """The ModelProto at `path` (weights not loaded) when it carries this tool's stamp, else None."""
    import onnx

    try:
        model = onnx.ModelProto()
        model.ParseFromString(read_bounded(path, BOUNDS["graph"]))
    except Exception:  # not a graph at all: not ours
        return None
    return model if any(p.key == "producer" and p.value == PRODUCER for p in model.metadata_props) else None


def _stamped_onnx(path: Path) -> bool:
    return _own_graph(path) is not None


def _own_external_data(path: Path) -> bool:
    """X.onnx.data is this tool's when X.onnx is, and X.onnx's tensors keep their data there."""
    graph = path.with_name(path.name[: -len(".data")])
    model = _own_graph(graph) if external_data_path(graph) == path and _regular(graph) else None
    if model is None:
        return False
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    return path.name in locations


def _own_shared_data(path: Path) -> bool:
    """A split of several shapes' shared weights (export/shapes.py): its folder's manifest is this tool's and lists it."""
    record = _json_record(path.parent / "manifest.json")
    shared = record.get("shared_weights") if isinstance(record, dict) and record.get("producer") == PRODUCER else None
    return isinstance(shared, dict) and shared.get("path") == path.name


def _own_cache_blob(path: Path) -> bool:
    """A blob OpenVINO wrote into the model cache folder this tool made beside its graphs (openvino_runtime.py)."""
    mark = path.parent / OPENVINO_CACHE_MARK
    return path.parent.name == OPENVINO_CACHE and _regular(mark) and _stamped_json(mark)


def _stamped_engine(path: Path) -> bool:
    sidecar = sidecar_path(path)
    if not _regular(sidecar):
        return False
    record = _json_record(sidecar)
    return (
        isinstance(record, dict)
        and record.get("producer") == PRODUCER
        and record.get("built_by") == PRODUCER
        and record.get("engine") == path.name
    )


def _stamped_gguf(path: Path) -> bool:
    try:
        import gguf

        field = gguf.GGUFReader(str(path)).fields.get(GGUF_KEY)
        return field is not None and bytes(field.parts[field.data[0]]).decode() == PRODUCER
    except Exception:  # not a GGUF, or no gguf package to read one: not recognised
        return False


def _stamped_png(path: Path) -> bool:
    try:
        from PIL import Image

        with Image.open(path) as picture:
            return picture.format == "PNG" and picture.text.get(PNG_KEY) == PRODUCER
    except Exception:
        return False


def _stamped_video(path: Path) -> bool:
    try:
        import av

        with av.open(str(path)) as container:
            return container.metadata.get(VIDEO_KEY) == PRODUCER
    except Exception:
        return False


_STAMPS = {
    ".onnx": _stamped_onnx,
    ".json": _stamped_json,
    ".plan": _stamped_engine,
    ".data": _own_shared_data,
    ".blob": _own_cache_blob,
    ".gguf": _stamped_gguf,
    ".png": _stamped_png,
    ".mp4": _stamped_video,
    ".mkv": _stamped_video,
    ".avi": _stamped_video,
}


def _ledger(folder: Path) -> dict[str, list[int]]:
    """The files the ledger of `folder` lists; {} when it has none (or one that is not this tool's)."""
    path = folder / LEDGER
    if not _regular(path):
        return {}
    record = _json_record(path)
    if not isinstance(record, dict) or record.get("producer") != PRODUCER or not isinstance(record.get("files"), dict):
        return {}
    return record["files"]


def _fingerprint(path: Path) -> list[int]:
    st = os.stat(path, follow_symlinks=False)
    return [st.st_size, st.st_mtime_ns]


def _listed(path: Path, root: Path, files: dict) -> bool:
    return _regular(path) and files.get(path.relative_to(root).as_posix()) == _fingerprint(path)


def is_own(path: Path) -> bool:
    """Whether the file at `path` is one this tool wrote (its stamp, or its folder's ledger); a link never is."""
    path = Path(path)
    if not _regular(path):
        return False
    if path.name.endswith(".onnx.data"):
        return _own_external_data(path)
    stamp = _STAMPS.get(path.suffix.lower())
    if stamp is not None and stamp(path):
        return True
    return _listed(path, path.parent, _ledger(path.parent))


def check_replaceable(path: Path, fix: str = "move it away or choose another output path") -> None:
    """Before --force replaces `path`: nothing there, or a file this tool wrote; one line otherwise."""
    path = Path(path)
    if not os.path.lexists(path) or is_own(path):
        return
    if os.path.islink(path):
        what = "is a symbolic link"
    elif path.is_dir():
        what = "is a folder"
    else:
        what = "was not written by flashvlm-export"
    raise UsageError(f"{path} {what}; {switch('force')} replaces only files this tool wrote, so it was left as it is: {fix}")


def check_folder_replaceable(folder: Path, flag: str) -> None:
    """Before --force replaces the folder `folder` (whole: a Triton repository; or the files it writes there: a
    split): every file in it, at any depth, is this tool's (listed, unchanged, by the folder's ledger, or its own
    stamp); otherwise one line naming the first other file (nothing is deleted). Staging folders are the tool's."""
    folder = Path(folder)
    files = _ledger(folder)
    for entry in sorted(folder.rglob("*")):
        relative = entry.relative_to(folder)
        if relative.parts[0].startswith(STAGING_PREFIX) or relative.as_posix() == LEDGER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            continue
        if not (_listed(entry, folder, files) or is_own(entry)):
            what = (
                "which flashvlm-export did not write"
                if entry.relative_to(folder).as_posix() not in files
                else "changed since flashvlm-export wrote it"
            )
            raise UsageError(
                f"{flag} {folder} holds {entry}, {what}; {switch('force')} replaces only a folder this tool wrote, so nothing was "
                f"deleted: move {entry.name} out of it, or choose another {flag}"
            )


def _write_ledger(folder: Path, files: dict) -> None:
    fd, temp = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=".json", dir=folder)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump({"producer": PRODUCER, "files": files}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(temp, folder / LEDGER)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def note_written(paths: list[Path]) -> None:
    """Add files this tool just wrote, which carry no stamp of their own, to their folders' ledgers."""
    by_folder: dict[Path, list[Path]] = {}
    for path in paths:
        by_folder.setdefault(Path(path).parent, []).append(Path(path))
    for folder, written in by_folder.items():
        check_replaceable(folder / LEDGER)
        files = {name: entry for name, entry in _ledger(folder).items() if _regular(folder / name)}
        files.update({p.name: _fingerprint(p) for p in written})
        _write_ledger(folder, files)


def mark_folder(folder: Path) -> None:
    """The ledger of a folder this tool has just filled (every file in it, at any depth, is this tool's)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): _fingerprint(p) for p in sorted(folder.rglob("*")) if _regular(p) and p.name != LEDGER
    }
    _write_ledger(folder, files)
