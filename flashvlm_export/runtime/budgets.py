"""The budget a request asks of a budget-range graph or split (issue 23): one K for the batch, or one per image.

The runtimes refuse a budget outside the graph's range here, in one line, before the graph runs; the graph itself
would clamp it into the range (selector/range.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from flashvlm_export.errors import UsageError, arg


def per_image(budget: int | Sequence[int], batch: int, source: str) -> list[int]:
    """[K_0, ..., K_{B-1}]: one whole number for every image of the batch, or a list of exactly B of them."""
    values = [budget] * batch if isinstance(budget, (int, np.integer)) and not isinstance(budget, bool) else budget
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) and not isinstance(values, np.ndarray):
        raise UsageError(f"{arg('budget', budget)} for {source} is not a whole number or a list of one per image")
    values = list(values)
    if len(values) != batch or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) for k in values):
        raise UsageError(f"{arg('budget', budget)} for {source}: pass one whole number, or a list of {batch} (one per image)")
    return [int(k) for k in values]


def budget_feed(budget: int | Sequence[int], batch: int, k_min: int, k_max: int, source: str) -> np.ndarray:
    """The graph's `budget` input (B,) int64; a budget outside KMIN..KMAX is a one-line error naming it."""
    values = per_image(budget, batch, source)
    outside = [k for k in values if not k_min <= k <= k_max]
    if outside:
        raise UsageError(f"{arg('budget', outside[0])} is outside {source}'s range {k_min}..{k_max}; ask for a budget in it")
    return np.asarray(values, dtype=np.int64)
