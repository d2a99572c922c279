"""Every model the toolchain serves: the zoo's declared specs by --model name, and each family's adapter.

Adding a model is one declarative file in models/zoo/ (its ModelSpec) and its SPECS in ZOO below; a new
family also needs its adapter module (models/<family>.py, the functions models/adapter.py lists).
"""

from __future__ import annotations

import importlib

from flashvlm_export.errors import UsageError, nearest
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.zoo import llava15, llava_next, qwen2_5_vl, qwen3_5, qwen3_vl

ZOO = (llava15, qwen2_5_vl, llava_next, qwen3_vl, qwen3_5)
MODELS: dict[str, ModelSpec] = {spec.name: spec for module in ZOO for spec in module.SPECS}


def model_name(name: str) -> str:
    """The zoo's spelling of a --model name, matched case-insensitively; an unknown name is a one-line error
    suggesting the nearest name (errors.nearest). The one resolver of every command's --model."""
    key = name.strip().casefold()
    for known in MODELS:
        if known.casefold() == key:
            return known
    near = nearest(name, MODELS)
    hint = f"did you mean --model {near}?" if near else f"choose one of: {', '.join(MODELS)}"
    raise UsageError(f"unknown --model {name!r}; {hint}")


def get_spec(name: str) -> ModelSpec:
    return MODELS[model_name(name)]


def adapter(spec: ModelSpec):
    """The family's adapter module (models/llava.py, models/qwen2_5_vl.py), imported on first use."""
    return importlib.import_module(f"flashvlm_export.models.{spec.family}")
