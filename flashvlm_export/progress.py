"""Progress of long steps: an opening line, then the time elapsed, ticking on a terminal and a line every 30 s in a log;
counts in words.

No dependency and no estimate: on 2 CPU cores one export's time varied 3-9x with the machine's load and with N
(docs/PERFORMANCE.md), so an opening line says only what runs (and whether it can take minutes), then how long it
has run: on a terminal a line on stderr redrawn every second; in a log (CI, a pipe, `| cat`) a line every 30 s past
the start, so a silent minute never looks like a hang.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

LOG_EVERY_S = 30.0


def plural(count: int, noun: str) -> str:
    """`count noun`, with the noun's plural unless the count is one: "1 pruning round", "56 pruning rounds"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def clock(seconds: float) -> str:
    """Elapsed time as a person reads it: "42s", "3 min 05 s"."""
    whole = int(seconds)
    return f"{whole}s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def _isatty(stream) -> bool:
    return hasattr(stream, "isatty") and stream.isatty()


@contextmanager
def progress(label: str, log=print, stream=None, hint: str = ""):
    """`label` is running: say so (and `hint`), then keep saying for how long (a ticking line on a terminal `stream`,
    stderr by default; a line through `log` every LOG_EVERY_S seconds when either stream is not a terminal)."""
    stream = stream or sys.stderr
    log(f"{label}{'; ' + hint if hint else ''}")
    tty = _isatty(stream)
    to_log = not tty or not _isatty(sys.stdout)  # `| tee log` with stderr on a terminal: the log gets its lines too
    stop = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        next_log = LOG_EVERY_S
        while not stop.wait(min(1.0, LOG_EVERY_S)):
            elapsed = time.perf_counter() - start
            if tty:
                stream.write(f"\r  ... {clock(elapsed)} elapsed\x1b[K")
                stream.flush()
            if to_log and elapsed >= next_log:
                log(f"  ... still running, {clock(elapsed)} elapsed")
                next_log += LOG_EVERY_S

    thread = threading.Thread(target=tick, name="flashvlm-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if tty:
            stream.write("\r\x1b[K")
            stream.flush()
