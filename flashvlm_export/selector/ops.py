"""Small tensor helpers shared by the reference and the static selector."""

from __future__ import annotations

import numpy as np
import torch

L2NORM_EPS = 1e-12  # torch.nn.functional.normalize's default floor on the norm
MINMAX_EPS = 1e-6  # "+ 1e-6" in every min-max normalisation of ALGORITHM.md
LOG_FLOOR = 1e-6  # max(S, 1e-6) before the log in the fusion, and S_ext when there is no text


def l2norm(x: torch.Tensor) -> torch.Tensor:
    """Row-wise x / max(||x||_2, 1e-12) along the last axis."""
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(L2NORM_EPS)


def minmax(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min + 1e-6) along the last axis."""
    lo = x.amin(dim=-1, keepdim=True)
    hi = x.amax(dim=-1, keepdim=True)
    return (x - lo) / (hi - lo + MINMAX_EPS)


def quantile_position(n: int, quantile: float) -> tuple[int, float]:
    """torch.quantile's (lower index, weight) for a sorted ascending vector of n values, in float32.

    torch builds the rank as float32(quantile) * float32(n - 1) in float32; we mirror that so
    the static threshold is bitwise the same as torch.quantile's.
    """
    rank = np.float32(np.float32(quantile) * np.float32(n - 1))
    lower = int(np.floor(rank))
    return lower, float(np.float32(rank - np.float32(lower)))


def lerp(lower: torch.Tensor, upper: torch.Tensor, weight: float) -> torch.Tensor:
    """torch.lerp's formula with a constant weight (two forms, chosen at build time).

    torch fuses the multiply-add of the weight >= 0.5 form, ONNX cannot; the result may then differ
    by one ulp, but theta stays in (v[lower], v[upper]] and no value lies strictly between those two
    neighbours, so the gate q >= theta keeps exactly the same tokens (tested).
    """
    if weight < 0.5:
        return lower + weight * (upper - lower)
    return upper - (upper - lower) * (1.0 - weight)
