"""Artifact files: default names, refusing to overwrite, atomic writes, sidecar records."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from flashvlm_export.errors import UsageError


def artifact_stem(request) -> str:
    """llava15_b128, llava15_selector_b128, llava15_b128_bs2_fp16_plugin, ... (defaults add nothing)."""
    kind = "_selector" if request.selector_only else ""
    tokens = f"_n{request.n_tokens}" if request.n_tokens is not None else ""
    batch = f"_bs{request.batch}" if request.batch != 1 else ""
    precision = f"_{request.precision}" if request.precision != "fp32" else ""
    plugin = "_plugin" if request.plugin else ""
    return f"{request.spec.name}{kind}{tokens}_b{request.budget}{batch}{precision}{plugin}"


def graph_name(request) -> str:
    return artifact_stem(request) + ".onnx"


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_suffix(".json")


def human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def artifact_size(path: Path) -> int:
    """Bytes of an artifact together with its external-data file, if any."""
    total = path.stat().st_size
    data = external_data_path(path)
    if data.exists():
        total += data.stat().st_size
    return total


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


def check_writable(paths: list[Path], force: bool) -> None:
    """Fail before any work if an output exists (without --force) or its folder cannot be written."""
    for path in paths:
        folder = path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create output directory {folder}: {exc.strerror}; choose another --out") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"output directory {folder} is not writable; choose another --out or fix its permissions")
        for target in (path, sidecar_path(path)):
            if target.exists() and not force:
                raise UsageError(f"{target} already exists; pass --force to overwrite it, or choose another --out")


@contextmanager
def atomic_outputs(final_paths: list[Path]):
    """Yield temp paths beside the finals; on success rename them all into place, else delete them."""
    folder = final_paths[0].parent
    staging = Path(tempfile.mkdtemp(prefix=".flashvlm-tmp-", dir=folder))
    temps = [staging / p.name for p in final_paths]
    try:
        yield temps
        for temp, final in zip(temps, final_paths, strict=True):
            if temp.exists():
                os.replace(temp, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, record: dict) -> None:
    fd, temp = tempfile.mkstemp(prefix=".flashvlm-tmp-", suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def read_sidecar(artifact: Path) -> dict:
    path = sidecar_path(artifact)
    if not path.is_file():
        raise UsageError(f"{artifact} has no sidecar {path}; re-export it with flashvlm-export")
    return json.loads(path.read_text())


class StepTimer:
    """Logs `NAME: what took 3.1s, saved as 'x' (1.2 GB)` lines, Ultralytics-style."""

    def __init__(self, name: str, log=print):
        self.name = name
        self.log = log
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def done(self, what: str, path: Path | None = None) -> None:
        saved = f", saved as '{path}' ({human_size(artifact_size(path))})" if path is not None else ""
        self.log(f"{self.name}: {what} {self.elapsed:.1f}s{saved}")
