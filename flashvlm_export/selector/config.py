"""Every hyperparameter of shared/ALGORITHM.md, with its default, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from flashvlm_export.errors import UsageError

GATES = ("llava", "norm")

# name -> (low, high, low excluded, high excluded): where each float hyperparameter is meaningful and finite
# in float32. Temperatures below 1e-6 overflow the softmax of a cosine; a power above 64 flushes q to zero.
RANGES = {
    "eta": (0.0, 1.0, False, False),  # convex weight of the two log-scores
    "text_temperature": (1e-6, 1e6, False, False),
    "patch_temperature": (1e-6, 1e6, False, False),
    "power": (0.0, 64.0, True, False),
    "top_p": (0.0, 1.0, True, True),
    "attenuation": (0.0, 1.0, False, False),  # a factor that attenuates
    "important_ratio": (0.0, 1.0, False, False),
}


def _check_range(name: str, value, low: float, high: float, low_open: bool, high_open: bool) -> None:
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{name}={value!r} is not a number; pass a value in {interval}")
    if not math.isfinite(value):
        raise UsageError(f"{name}={value} is not finite; pass a value in {interval}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise UsageError(f"{name}={value} is out of range; pass a value in {interval}")


@dataclass(frozen=True)
class SelectorConfig:
    eta: float = 0.5  # log-domain fusion weight of the extrinsic (text) score, step 8
    text_temperature: float = 0.05  # softmax over text tokens when aggregating similarity, step 5
    patch_temperature: float = 0.01  # softmax over patches when sharpening, step 6
    power: float = 2.5  # power-law enhancement q = p ** power, step 6
    top_p: float = 0.005  # top-p gate keeps q >= quantile(q, 1 - top_p), step 7
    attenuation: float = 0.1  # factor applied to q below the top-p threshold, step 7
    important_ratio: float = 0.5  # K_imp = floor(important_ratio * K), step 9
    step: int = 8  # tokens removed per pruning round at most (s), step 11
    max_rounds: int | None = None  # optional cap on rounds; raises step to fit, step 11
    gate: str = "llava"  # query gating: "llava" (authors' LLaVA code) or "norm" (Qwen port / paper), step 3

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise UsageError(f"gate={self.gate!r} is not a known gate; use one of {', '.join(GATES)}")
        for name, (low, high, low_open, high_open) in RANGES.items():
            _check_range(name, getattr(self, name), low, high, low_open, high_open)
        for name in ("step", "max_rounds"):
            value = getattr(self, name)
            if value is None and name == "max_rounds":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                unset = " (or unset for no cap)" if name == "max_rounds" else ""
                raise UsageError(f"{name}={value!r} must be a whole number >= 1{unset}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SelectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(values, dict):
            raise UsageError(f"selector settings must be a JSON object, got {type(values).__name__}")
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown selector setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
