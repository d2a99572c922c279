"""How a command ends: SIGTERM raised like Ctrl-C so cleanups run, and every failure the user can fix told in
one line with its exit code (2 for bad input, 1 for failed parity, 130 / 143 for an interruption)."""

from __future__ import annotations

import signal
import sys
import threading

from flashvlm_export.cli.commands import PROG
from flashvlm_export.errors import FlashVLMError, ParityError, Terminated

INSTALL_HINTS = {
    "onnxruntime": "pip install -e '.[cpu]' (or '.[gpu]' on a CUDA host: onnxruntime-gpu, never both)",
    "onnxruntime_extensions": "pip install -e '.[plugin-ort]'",
    "pyarrow": "pip install -e '.[eval]' (eval's parquet and Arrow benchmarks)",
}


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)


def _in_chain(exc: BaseException, kinds) -> BaseException | None:
    """The first exception of `kinds` among exc, its causes and contexts (exporters wrap what they catch)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


INTERRUPTED_CODES = (130, Terminated.exit_code)  # Ctrl-C (SIGINT) and SIGTERM


def _interrupted(exc: BaseException) -> int:
    """The interruption's line: what a command kept when it says so (eval keeps each answered question: the exception's
    `kept` note), else that no partial files were kept."""
    kept = getattr(exc, "kept", None) or "no partial files were kept"
    if isinstance(exc, Terminated):
        print(f"{PROG}: terminated (SIGTERM); {kept}", file=sys.stderr, flush=True)
        return Terminated.exit_code
    print(f"{PROG}: interrupted; {kept}", file=sys.stderr, flush=True)
    return 130


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup that follows runs once, undisturbed
    raise Terminated()


def _unexpected(exc: Exception) -> int | None:
    """The exit code of an exception that wraps one the user can act on; None when it is a bug (re-raised)."""
    interrupt = _in_chain(exc, (KeyboardInterrupt, Terminated))
    if interrupt is not None:
        return _interrupted(interrupt)
    missing = _in_chain(exc, ModuleNotFoundError)
    if missing is not None and missing.name:
        top = missing.name.split(".")[0]
        _error(f"the Python module {top!r} is not installed; {INSTALL_HINTS.get(top, f'pip install {top}')}")
        return 2
    ours = _in_chain(exc, FlashVLMError)
    if ours is not None:
        _error(str(ours))
        return ours.exit_code
    os_error = _in_chain(exc, OSError)
    if os_error is not None:  # the OS refused a path or a write: environmental, one line
        where = f" {os_error.filename}" if getattr(os_error, "filename", None) else ""
        _error(f"{os_error.strerror or os_error}{where}; check the path, its permissions and free space")
        return 2
    return None


def guarded(command, argv: list[str]) -> int:
    """command(argv)'s exit code, with SIGTERM handled (main thread only) and errors told in one line."""
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        return command(argv)
    except ParityError:
        return ParityError.exit_code
    except FlashVLMError as exc:
        _error(str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)
    except Exception as exc:
        code = _unexpected(exc)
        if code is None:
            raise
        return code
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)
