"""Every hyperparameter of shared/ALGORITHM.md, with its default, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from flashvlm_export.errors import UsageError

GATES = ("llava", "norm")


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
        if self.step < 1:
            raise UsageError(f"step={self.step} must be >= 1")
        if self.max_rounds is not None and self.max_rounds < 1:
            raise UsageError(f"max_rounds={self.max_rounds} must be >= 1 (or unset for no cap)")
        if not 0.0 <= self.important_ratio <= 1.0:
            raise UsageError(f"important_ratio={self.important_ratio} must be in [0, 1]")
        if not 0.0 < self.top_p < 1.0:
            raise UsageError(f"top_p={self.top_p} must be in (0, 1)")
        for name in ("text_temperature", "patch_temperature", "power"):
            if getattr(self, name) <= 0:
                raise UsageError(f"{name}={getattr(self, name)} must be > 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> SelectorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(f"unknown selector setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)
