"""Timing with warm-up and repeats; results are data (median, p10, p90 in milliseconds)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    name: str
    median_ms: float
    p10_ms: float
    p90_ms: float
    repeats: int

    def row(self) -> str:
        return f"{self.name:<40} {self.median_ms:10.3f} {self.p10_ms:10.3f} {self.p90_ms:10.3f}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def of(cls, name: str, samples: list[float]) -> Timing:
        """Median, p10 and p90 of wall-clock samples in milliseconds."""
        p10, median, p90 = np.percentile(samples, [10, 50, 90])
        return cls(name, float(median), float(p10), float(p90), len(samples))


def measure(
    name: str, fn: Callable[[], object], warmup: int = 3, repeats: int = 20, sync: Callable[[], None] | None = None
) -> Timing:
    """Wall-clock milliseconds of fn(); `sync` (e.g. torch.cuda.synchronize) runs before each stop."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        samples.append((time.perf_counter() - start) * 1e3)
    return Timing.of(name, samples)


HEADER = f"{'backend':<40} {'median ms':>10} {'p10 ms':>10} {'p90 ms':>10}"
