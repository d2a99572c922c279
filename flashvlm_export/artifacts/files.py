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


_DIGESTS: dict[tuple, str] = {}  # (real path, device, inode, size, mtime_ns, ctime_ns) -> sha256, large files only
CACHED_FROM = 64 << 20  # smaller files are hashed every time: a read costs little, and a timestamp has a granularity


def sha256_of(path: Path) -> str:
    """The file's sha256; a file hashed before in this process and unchanged since (same inode, size and modification
    and change times) is not read again when it is large: a split of several shapes names its multi-GB shared weights
    from every shape's manifest."""
    import os

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key in _DIGESTS:
        return _DIGESTS[key]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    if st.st_size >= CACHED_FROM:
        _DIGESTS[key] = digest.hexdigest()
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
