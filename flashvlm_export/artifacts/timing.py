"""Step timing: `NAME: what took 3.1s, saved as 'x' (1.2 GB)` lines, Ultralytics-style."""

from __future__ import annotations

import time
from pathlib import Path

from flashvlm_export.artifacts.files import artifact_size, human_size


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
