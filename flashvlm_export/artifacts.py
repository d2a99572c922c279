"""Artifact files: default names, refusing to overwrite, all-or-nothing writes, sidecar records.

Writes go to a staging folder `.flashvlm-tmp-*` beside the outputs, which records its owner's pid.
Placement is exclusive: each output is hard-linked into place (link(2) fails on any existing entry,
a dangling symlink included), so nothing that appeared meanwhile is replaced. With --force, what is
there is first moved aside into the staging folder and moved back if placement fails. Either every
output of one write lands, or none does. A staging folder whose owner is gone (SIGKILL, power loss)
is reclaimed by the next write into that folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from flashvlm_export.errors import FlashVLMError, UsageError

STAGING_PREFIX = ".flashvlm-tmp-"
OWNER_FILE = ".owner"
OWNERLESS_GRACE_S = 60.0  # a staging folder is given this long to record its owner
OS_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another output folder",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise the limit or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "permission denied; choose another output folder or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another output folder",
    errno.ENAMETOOLONG: "a file name is too long for this file system; choose a shorter --out",
    errno.EISDIR: "the output path is a folder; name a file",
    errno.ENOTDIR: "a parent of the output path is a file, not a folder; choose another --out",
    errno.EIO: "the device reported an I/O error; choose another output folder",
}


def artifact_stem(request) -> str:
    """llava15_b128, llava15_selector_b128, llava15_b128_bs2_fp16_plugin, ... (defaults add nothing)."""
    kind = "_selector" if request.selector_only else ""
    tokens = f"_n{request.n_tokens}" if request.n_tokens is not None else ""
    variant = _variant(request.batch, request.precision, request.plugin)
    return f"{request.spec.name}{kind}{tokens}_b{request.budget}{variant}"


def _variant(batch: int, precision: str, plugin: bool) -> str:
    return (f"_bs{batch}" if batch != 1 else "") + (f"_{precision}" if precision != "fp32" else "") + ("_plugin" if plugin else "")


def graph_name(request) -> str:
    return artifact_stem(request) + ".onnx"


def sidecar_path(artifact: Path) -> Path:
    return artifact.with_suffix(".json")


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")


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


def split_stem(model: str, batch: int, precision: str, plugin: bool) -> str:
    """The folder of a split export: llava15_split, llava15_bs2_fp16_plugin_split, ... (defaults add nothing)."""
    return f"{model}{_variant(batch, precision, plugin)}_split"


def artifact_size(path: Path) -> int:
    """Bytes of an artifact together with its external-data file, if any."""
    total = path.stat().st_size
    data = external_data_path(path)
    if data.exists():
        total += data.stat().st_size
    return total


def os_error_message(exc: OSError, where: Path | str) -> str:
    """One line for an OSError the OS raised while writing `where`."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    fix = OS_WRITE_ERRORS.get(exc.errno, "choose another output folder")
    return f"cannot write {where}: {exc.strerror or exc} ({name}); {fix}; nothing was kept"


def os_error_in(exc: BaseException) -> OSError | None:
    """The OSError an exporter wrapped (its cause or context chain), if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in OS_WRITE_ERRORS:
            return exc
        text = str(exc)  # C++ writers surface errno as text only
        for code, phrase in ((errno.ENOSPC, "No space left on device"), (errno.EFBIG, "File too large")):
            if phrase in text:
                return OSError(code, os.strerror(code))
        exc = exc.__cause__ or exc.__context__
    return None


# ---------------------------------------------------------------- staging folders and their owners


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


def _make_staging(folder: Path) -> Path:
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


# ---------------------------------------------------------------- checks before work


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def check_writable(paths: list[Path], force: bool, log=print) -> None:
    """Fail before any work if an output exists (without --force) or its folder cannot take the files."""
    probed = set()
    for path in paths:
        folder = path.parent
        if folder not in probed:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create output directory {folder}: {exc.strerror}; choose another --out") from None
            try:  # a real write: permission bits alone say nothing for root, /proc, /sys or a read-only mount
                fd, probe = tempfile.mkstemp(prefix=STAGING_PREFIX, dir=folder)
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise UsageError(
                    f"output directory {folder} cannot be written ({exc.strerror}); choose another --out or fix its permissions"
                ) from None
            reclaim_stale_staging(folder, log)
            probed.add(folder)
        for target in (path, sidecar_path(path), external_data_path(path)):
            if len(target.name.encode()) > _name_max(folder):
                raise UsageError(
                    f"output name {target.name[:40]}... is {len(target.name.encode())} bytes, over this file system's "
                    f"limit of {_name_max(folder)}; choose a shorter --out"
                )
            if target.is_dir() and not target.is_symlink():
                raise UsageError(f"{target} is a folder; name a file with --out, or choose another --out-dir")
            if os.path.lexists(target) and not force:
                what = "is a symbolic link" if target.is_symlink() else "already exists"
                raise UsageError(f"{target} {what}; pass --force to overwrite it, or choose another --out")


# ---------------------------------------------------------------- all-or-nothing placement


def _same_file(path: Path, stat: os.stat_result) -> bool:
    try:
        now = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (stat.st_dev, stat.st_ino)


def _place_exclusive(temp: Path, final: Path) -> None:
    """Put temp at final only if nothing is there: link(2), or an O_EXCL placeholder where links are refused."""
    try:
        os.link(temp, final, follow_symlinks=False)
        return
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
    fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)  # claims the name
    os.close(fd)
    os.replace(temp, final)  # replaces only the placeholder this process just created


def _commit(staging: Path, temps: list[Path], finals: list[Path], overwrite: bool) -> None:
    """Place every temp at its final path, or none: on any failure, undo what was placed and restore backups."""
    placed: list[tuple[Path, os.stat_result]] = []
    backups: list[tuple[Path, Path]] = []
    present = [(t, f) for t, f in zip(temps, finals, strict=True) if os.path.lexists(t)]
    try:
        if overwrite:
            for i, (_, final) in enumerate(present):
                if os.path.lexists(final):
                    if final.is_dir() and not final.is_symlink():
                        raise UsageError(f"{final} is a folder; remove it or choose another --out")
                    backup = staging / f".backup-{i}-{final.name}"
                    os.rename(final, backup)  # a symlink moves as a link
                    backups.append((backup, final))
        for temp, final in present:
            stat = os.stat(temp)
            try:
                _place_exclusive(temp, final)
            except FileExistsError:
                raise UsageError(
                    f"{final} appeared while this run was writing; it was left as it is and nothing was written; "
                    "pass --force to overwrite it, or choose another --out"
                ) from None
            placed.append((final, stat))
    except BaseException:
        for final, stat in reversed(placed):
            if _same_file(final, stat):
                os.unlink(final)
        for backup, final in reversed(backups):
            if not os.path.lexists(final):
                os.rename(backup, final)
        raise


@contextmanager
def atomic_outputs(final_paths: list[Path], overwrite: bool = True):
    """Yield temp paths in a staging folder beside the finals; on success place them all, else none.

    overwrite=False never replaces anything at a final path; overwrite=True (--force) replaces what is
    there, and puts it back if placement fails part-way. Temps left unwritten are not placed.
    """
    folder = final_paths[0].parent
    try:
        staging = _make_staging(folder)
    except OSError as exc:
        raise UsageError(os_error_message(exc, folder)) from None
    temps = [staging / p.name for p in final_paths]
    try:
        try:
            yield temps
            _commit(staging, temps, final_paths, overwrite)
        except FlashVLMError:
            raise
        except Exception as exc:
            os_error = os_error_in(exc)
            if os_error is None:
                raise
            raise UsageError(os_error_message(os_error, final_paths[0])) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_json_atomic(path: Path, record: dict) -> None:
    """Replace `path` with `record` as JSON in one rename (records the tool owns: reports, bench results)."""
    fd, temp = tempfile.mkstemp(prefix=STAGING_PREFIX, suffix=".json", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=True, allow_nan=False)
            f.write("\n")
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- sidecar records

_INT = re.compile(r"-?\d+\Z")
BOOL_KEYS = ("plugin",)


def sidecar_values(metadata: dict[str, str]) -> dict:
    """ONNX metadata_props are strings; the sidecar keeps their types (ints, bools, the selector config object)."""
    typed: dict = {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            typed[key] = value
        elif key in BOOL_KEYS and value in ("0", "1"):
            typed[key] = value == "1"
        elif _INT.match(value):
            typed[key] = int(value)
        elif value.startswith("{"):
            try:
                typed[key] = json.loads(value)
            except ValueError:
                typed[key] = value
        else:
            typed[key] = value
    return typed


def read_sidecar(artifact: Path, required: tuple[str, ...] = ()) -> dict:
    """The JSON record next to an artifact; a broken or incomplete one is a one-line error."""
    path = sidecar_path(artifact)
    fix = f"rebuild {artifact.name} with flashvlm-export so its sidecar is rewritten"
    from flashvlm_export.artifact_paths import BOUNDS, named_file, read_bounded

    if not os.path.lexists(path):
        raise UsageError(f"{artifact} has no sidecar {path}; re-export it with flashvlm-export")
    path = named_file(artifact, artifact.parent, path.name, "sidecar", "json", fix=fix)  # no link out, no FIFO, bounded
    try:
        record = json.loads(read_bounded(path, BOUNDS["json"]))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"sidecar {path} is not readable JSON ({type(exc).__name__}: {str(exc)[:80]}); {fix}") from None
    if not isinstance(record, dict):
        raise UsageError(f"sidecar {path} holds a JSON {type(record).__name__}, not a record; {fix}")
    missing = [key for key in required if key not in record]
    if missing:
        raise UsageError(f"sidecar {path} lacks {', '.join(missing)}; {fix}")
    return record


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
