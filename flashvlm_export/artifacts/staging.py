"""Staging folders and the checks before any work.

Writes go to a staging folder `.flashvlm-tmp-*` beside the outputs, which records its owner's pid
(placement.py places its files). A staging folder whose owner is gone (SIGKILL, power loss) is
reclaimed by the next write into that folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from flashvlm_export.artifacts.files import existing_ancestor, human_size
from flashvlm_export.artifacts.naming import STAGING_PREFIX, external_data_path
from flashvlm_export.artifacts.ownership import check_replaceable
from flashvlm_export.artifacts.sidecar import sidecar_path
from flashvlm_export.errors import UsageError

OWNER_FILE = ".owner"
OWNERLESS_GRACE_S = 60.0  # a staging folder is given this long to record its owner


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _owner_alive(owner: dict) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, someone else's
    started = owner.get("start")
    return started is None or _start_time(pid) in (None, started)


def make_staging(folder: Path) -> Path:
    """A staging folder in `folder`, which is made here (with its parents) when it does not exist yet: output folders
    appear when the first output is written, not when a run starts (check_writable)."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:  # an interruption here must not leave an ownerless folder behind
        owner = {"pid": os.getpid(), "start": _start_time(os.getpid()), "created": time.time()}
        (staging / OWNER_FILE).write_text(json.dumps(owner))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging


def reclaim_stale_staging(folder: Path, log=print) -> list[Path]:
    """Delete `.flashvlm-tmp-*` folders in `folder` whose owning process is gone; say so in one line."""
    reclaimed, freed = [], 0
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return []
    for staging in candidates:
        try:
            owner = json.loads((staging / OWNER_FILE).read_text())
        except (OSError, ValueError):
            owner = None  # not yet recorded (a live writer's first instant) or a pre-owner-file version
        if owner is not None and _owner_alive(owner if isinstance(owner, dict) else {}):
            continue
        try:
            if owner is None and time.time() - staging.stat().st_mtime < OWNERLESS_GRACE_S:
                continue
            freed += sum(f.stat().st_size for f in staging.rglob("*") if f.is_file())
        except OSError:
            continue
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            reclaimed.append(staging)
    if reclaimed:
        log(
            f"Staging: reclaimed {len(reclaimed)} stale staging folder(s) in {folder} ({human_size(freed)}) "
            "left by an interrupted run"
        )
    return reclaimed


def _name_max(folder: Path) -> int:
    folder = existing_ancestor(folder)  # a folder not made yet: its parent's
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(paths: list[Path], force: bool, log=print, *, flag: str) -> None:
    """Fail before any work if an output exists (without --force; with it, if it is not this tool's own) or its
    folder cannot take the files; each refusal's fix names `flag`, the caller's flag that chose these paths (--out,
    --out-dir, --engine-dir)."""
    probed = set()
    for path in paths:
        folder = path.parent
        if folder not in probed:
            # a folder that does not exist yet is made when the outputs are placed, not here: a run refused later
            # (a bad checkpoint, an interrupted export) leaves no empty folder behind; its nearest existing ancestor
            # is probed instead, where the folder will be made
            existing = existing_ancestor(folder)
            if not existing.is_dir():
                raise UsageError(f"cannot create output directory {folder}: {existing} is not a folder; choose another {flag}")
            try:  # a real write: permission bits alone say nothing for root, /proc, /sys or a read-only mount
                fd, probe = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=existing)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                what = "output directory" if existing == folder else f"the folder {existing}, where {folder} would be made,"
                raise UsageError(
                    f"{what} cannot be written ({exc.strerror}); choose another {flag} or fix its permissions"
                ) from None
            if existing == folder:
                reclaim_stale_staging(folder, log)
            probed.add(folder)
        for target in (path, sidecar_path(path), external_data_path(path)):
            if len(target.name.encode()) > _name_max(folder):
                shorter = "--out" if "--out" in flag.replace("(", " ").replace(")", " ").split() else "name"
                raise UsageError(
                    f"output name {target.name[:40]}... is {len(target.name.encode())} bytes, over this file system's "
                    f"limit of {_name_max(folder)}; choose a shorter {shorter}"
                )
            if target.is_dir() and not target.is_symlink():
                raise UsageError(f"{target} is a folder; remove it, or choose another {flag}")
            if os.path.lexists(target) and not force:
                what = "is a symbolic link" if target.is_symlink() else "already exists"
                raise UsageError(f"{target} {what}; pass --force to overwrite it, or choose another {flag}")
            check_replaceable(target, f"move it away or choose another {flag}")
