"""What an artifact on disk weighs and hashes to, and where its folder will be."""

from __future__ import annotations

import hashlib
from pathlib import Path

from flashvlm_export.artifacts.naming import external_data_path


def human_size(n_bytes: int) -> str:
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def existing_ancestor(folder: Path) -> Path:
    """`folder`, or its nearest parent that exists: an output folder is made when its first output is placed
    (staging.make_staging), so free space, writability and name limits are asked of what is there now."""
    return next((p for p in (folder, *folder.parents) if p.exists()), Path("."))


def artifact_size(path: Path) -> int:
    """Bytes of an artifact together with its external-data file, if any."""
    total = path.stat().st_size
    data = external_data_path(path)
    if data.exists():
        total += data.stat().st_size
    return total
