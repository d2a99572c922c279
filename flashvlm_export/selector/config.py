"""Every hyperparameter of docs/ALGORITHM.md, with its default, in one frozen dataclass."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from flashvlm_export.errors import UsageError

GATES = ("llava", "norm")
TEXT_SCOPES = ("all", "before-image")  # which prompt tokens form T (docs/ALGORITHM.md, Qwen2.5-VL)
VIDEO_BUDGETS = ("per-group", "joint")  # a clip's budget rule (selector/clip.py); the first is the default
MODEL_DEFAULTS = (
    "gate",
)  # fields whose default is the model's (ModelSpec.gate): LLaVA's code gates "llava", the Qwen port "norm"


class SettingError(UsageError):
    """A hyperparameter out of its range; carries the field's name so a caller can name its own flag for it."""

    def __init__(self, name: str, shown: str, problem: str):
        self.name, self.shown, self.problem = name, shown, problem
        super().__init__(f"{name}={shown} {problem}")

    def named(self, flag: str) -> str:
        """The message with `flag` (e.g. "--top-p") in place of the field's name."""
        return f"{flag} {self.shown} {self.problem}"


def _setting(default, help: str, interval: tuple[float, float, bool, bool] | None = None, choices: tuple = ()):
    """A field with the one line its flag's --help shows and, for a float, where it is meaningful and finite in
    float32: (low, high, low excluded, high excluded)."""
    return field(default=default, metadata={"help": help, "range": interval, "choices": choices})


def interval_text(interval: tuple[float, float, bool, bool]) -> str:
    low, high, low_open, high_open = interval
    return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _check_range(name: str, value, interval: tuple[float, float, bool, bool]) -> None:
    low, high, low_open, high_open = interval
    shown = interval_text(interval)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SettingError(name, repr(value), f"is not a number; pass a value in {shown}")
    if not math.isfinite(value):
        raise SettingError(name, str(value), f"is not finite; pass a value in {shown}")
    if value < low or value > high or (low_open and value == low) or (high_open and value == high):
        raise SettingError(name, str(value), f"is out of range; pass a value in {shown}")


@dataclass(frozen=True)
class SelectorConfig:
    # Temperatures below 1e-6 overflow the softmax of a cosine; a power above 64 flushes q to zero.
    eta: float = _setting(0.5, "log-fusion weight of the text score", (0.0, 1.0, False, False))  # convex weight, step 8
    text_temperature: float = _setting(0.05, "softmax temperature over text tokens", (1e-6, 1e6, False, False))  # step 5
    patch_temperature: float = _setting(0.01, "softmax temperature over patches", (1e-6, 1e6, False, False))  # step 6
    power: float = _setting(2.5, "power-law sharpening exponent", (0.0, 64.0, True, False))  # q = p ** power, step 6
    top_p: float = _setting(0.005, "top-p gate keeps q >= quantile(1 - top_p)", (0.0, 1.0, True, True))  # step 7
    attenuation: float = _setting(0.1, "factor on q below the gate", (0.0, 1.0, False, False))  # step 7
    important_ratio: float = _setting(0.5, "K_imp = floor(ratio * K)", (0.0, 1.0, False, False))  # step 9
    step: int = _setting(8, "tokens pruned per round at most, >= 1")  # s, step 11
    max_rounds: int | None = _setting(
        None, "cap on pruning rounds, >= 1; raises the step to fit (leave unset for no cap)"
    )  # step 11
    gate: str = _setting("llava", "query gating", choices=GATES)  # "llava" (authors' code) or "norm" (Qwen port), step 3
    # T: every non-image token of the prompt ("all", ours), or only those before the image ("before-image": the
    # authors' Qwen port, which in Qwen's template leaves the question out). The runtime builds T by it.
    text_scope: str = _setting("all", "prompt tokens that form T", choices=TEXT_SCOPES)

    def __post_init__(self) -> None:
        if self.gate not in GATES:
            raise SettingError("gate", repr(self.gate), f"is not a known gate; use one of {', '.join(GATES)}")
        if self.text_scope not in TEXT_SCOPES:
            raise SettingError("text_scope", repr(self.text_scope), f"is not a text scope; use one of {', '.join(TEXT_SCOPES)}")
        for name, interval in RANGES.items():
            _check_range(name, getattr(self, name), interval)
        for name in ("step", "max_rounds"):
            value = getattr(self, name)
            if value is None and name == "max_rounds":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                unset = " (or unset for no cap)" if name == "max_rounds" else ""
                raise SettingError(name, repr(value), f"must be a whole number >= 1{unset}")

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


# name -> (low, high, low excluded, high excluded) of every float hyperparameter, from the fields above
RANGES = {f.name: f.metadata["range"] for f in dataclasses.fields(SelectorConfig) if f.metadata["range"]}
