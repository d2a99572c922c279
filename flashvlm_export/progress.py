"""Progress of long steps: an opening line with an estimate, then a ticking bar on a terminal; counts in words.

No dependency: on a terminal a one-line bar is redrawn on stderr every second; in a log (CI, a pipe)
a line is printed every 30 s past the start, so a silent minute never looks like a hang.
"""

from __future__ import annotations

import sys
import threading
import time
from contextlib import contextmanager

LOG_EVERY_S = 30.0
BAR = 24


def plural(count: int, noun: str) -> str:
    """`count noun`, with the noun's plural unless the count is one: "1 pruning round", "56 pruning rounds"."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _bar(elapsed: float, estimate: float) -> str:
    done = min(1.0, elapsed / estimate) if estimate > 0 else 0.0
    filled = int(done * BAR)
    tail = f"{elapsed:.0f}s of ~{estimate:.0f}s" if elapsed <= estimate else f"{elapsed:.0f}s, past the ~{estimate:.0f}s estimate"
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {tail}"


@contextmanager
def progress(label: str, estimate_s: float, log=print, stream=None, hint: str = ""):
    """`label` runs for about `estimate_s` seconds: say so (and `hint`), and keep saying how far along it is."""
    stream = stream or sys.stderr
    log(f"{label} (about {estimate_s:.0f}s){'; ' + hint if hint else ''}")
    tty = hasattr(stream, "isatty") and stream.isatty()
    stop = threading.Event()
    start = time.perf_counter()

    def tick() -> None:
        next_log = LOG_EVERY_S
        while not stop.wait(1.0):
            elapsed = time.perf_counter() - start
            if tty:
                stream.write(f"\r  {_bar(elapsed, estimate_s)}\x1b[K")
                stream.flush()
            elif elapsed >= next_log:
                log(f"  ... {_bar(elapsed, estimate_s)}")
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
