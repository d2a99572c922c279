"""All-or-nothing placement of a write's outputs, and one line for what the OS refuses.

Placement is exclusive: each output is hard-linked into place (link(2) fails on any existing entry,
a dangling symlink included), so nothing that appeared meanwhile is replaced. With --force, what is
there is first moved aside into the staging folder and moved back if placement fails; only a file
this tool wrote is ever replaced (ownership.py). Either every output of one write lands, or none does.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from flashvlm_export.artifacts.naming import STAGING_PREFIX
from flashvlm_export.artifacts.ownership import check_replaceable
from flashvlm_export.artifacts.staging import make_staging
from flashvlm_export.errors import FlashVLMError, UsageError

OS_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space or choose another output folder",
    errno.EDQUOT: "the disk quota is exhausted; free some space or choose another output folder",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise the limit or choose another output folder",
    errno.EROFS: "the file system is read-only; choose another output folder",
    errno.EACCES: "permission denied; choose another output folder or fix its permissions",
    errno.EPERM: "the operation is not permitted there; choose another output folder",
    errno.ENAMETOOLONG: "a file name is too long for this file system; choose a shorter name",
    errno.EISDIR: "the output path is a folder; name a file",
    errno.ENOTDIR: "a parent of the output path is a file, not a folder; choose another output folder",
    errno.EIO: "the device reported an I/O error; choose another output folder",
}


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


def _commit(staging: Path, temps: list[Path], finals: list[Path], overwrite: bool, own_only: bool) -> None:
    """Place every temp at its final path, or none: on any failure, undo what was placed and restore backups."""
    placed: list[tuple[Path, os.stat_result]] = []
    backups: list[tuple[Path, Path]] = []
    present = [(t, f) for t, f in zip(temps, finals, strict=True) if os.path.lexists(t)]
    if overwrite and own_only:  # every one checked before anything moves
        for _, final in present:
            if not (final.is_dir() and not final.is_symlink()):
                check_replaceable(final)
    try:
        if overwrite:
            for i, (_, final) in enumerate(present):
                if os.path.lexists(final):
                    if final.is_dir() and not final.is_symlink():
                        raise UsageError(f"{final} is a folder; remove it or write elsewhere")
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
                    "pass --force to overwrite it, or write elsewhere"
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
def atomic_outputs(final_paths: list[Path], overwrite: bool = True, own_only: bool = True):
    """Yield temp paths in a staging folder beside the finals; on success place them all, else none.

    overwrite=False never replaces anything at a final path; overwrite=True (--force) replaces what is
    there, and puts it back if placement fails part-way. Temps left unwritten are not placed. own_only
    (always, but for a file the user names to be updated in place: a timing cache): what is replaced must
    be this tool's own (ownership.py), else one line and nothing placed.
    """
    folder = final_paths[0].parent
    try:
        staging = make_staging(folder)
    except OSError as exc:
        raise UsageError(os_error_message(exc, folder)) from None
    temps = [staging / p.name for p in final_paths]
    try:
        try:
            yield temps
            _commit(staging, temps, final_paths, overwrite, own_only)
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
    """Replace `path` (only a record this tool wrote) with `record` as JSON in one rename."""
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def check_new_file(path: Path, flag: str, suffix: str, force: bool) -> None:
    """A file the user names with `flag` (--heatmap, --out, ...): the right suffix, not over an existing file without
    --force, in a folder that can be made and written; one line (UsageError) naming the value and the fix otherwise."""
    from flashvlm_export.artifact_paths import not_a_folder
    from flashvlm_export.errors import UsageError, arg, switch

    not_a_folder(path, arg(flag, str(path)), f"{flag}{suffix}")
    if path.suffix.lower() != suffix:
        raise UsageError(f"{arg(flag, str(path))} must end in {suffix}")
    if os.path.lexists(path) and not force:
        raise UsageError(f"{path} already exists; pass {switch('force')} to overwrite it, or choose another {arg(flag)}")
    check_replaceable(path, f"move it away or choose another {arg(flag)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the folder of {arg(flag, str(path))}: {exc.strerror}") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise UsageError(f"the folder of {arg(flag, str(path))} is not writable; choose another path")
