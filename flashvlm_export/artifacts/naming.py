"""What the files of an export are called: a graph from its request, a split's folder, a graph's external data."""

from __future__ import annotations

from pathlib import Path


def artifact_stem(request) -> str:
    """llava15_b128, llava15_selector_b128, llava15_b128_bs2_fp16_plugin, llava15_b16-256 (a budget range), ...
    (defaults add nothing)."""
    kind = "_selector" if request.selector_only else ""
    tokens = f"_n{request.n_tokens}" if request.n_tokens is not None else ""
    variant = _variant(request.batch, request.precision, request.plugin)
    return f"{request.spec.label}{kind}{tokens}_b{request.budget_label}{variant}"


def _variant(batch: int, precision: str, plugin: bool) -> str:
    return (
        (f"_bs{batch}" if batch != 1 else "") + (f"_{precision}" if precision != "fp32" else "") + ("_plugin" if plugin else "")
    )


def graph_name(request) -> str:
    return artifact_stem(request) + ".onnx"


def split_stem(model: str, batch: int, precision: str, plugin: bool) -> str:
    """The folder of a split export: llava15_split, llava15_bs2_fp16_plugin_split, ... (defaults add nothing)."""
    return f"{model}{_variant(batch, precision, plugin)}_split"


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")
