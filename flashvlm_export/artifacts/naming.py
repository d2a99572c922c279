"""What the files of an export are called: a graph from its request, a split's folder, a graph's external data, the
tool's temporary files."""

from __future__ import annotations

from pathlib import Path

STAGING_PREFIX = ".flashvlm-tmp-"  # staging folders and temporary files (staging.py), never an artifact
OPENVINO_CACHE = "openvino_cache"  # OpenVINO's model cache beside the graphs it compiled (openvino_runtime.py)
OPENVINO_CACHE_MARK = "flashvlm-export.json"  # in a cache folder this tool made: its blobs are then this tool's


def artifact_stem(request) -> str:
    """llava15_b128, llava15_selector_b128, llava15_b128_bs2_fp16_plugin, llava15_b16-256 (a budget range), ...
    (defaults add nothing)."""
    kind = "_selector" if request.selector_only else ""
    tokens = f"_n{request.n_tokens}" if request.n_tokens is not None else ""
    variant = _variant(request.batch, request.precision, request.plugin)
    return f"{request.spec.label}{clip_label(request)}{kind}{tokens}_b{request.budget_label}{variant}"


def clip_label(request) -> str:
    """A clip graph's part of a name: _f8 (per-group, the default rule) or _f8_joint; nothing for images."""
    frames = getattr(request, "frames", None)
    if frames is None:
        return ""
    return f"_f{frames}" + ("_joint" if getattr(request, "video_budget", "per-group") == "joint" else "")


def _variant(batch: int, precision: str, plugin: bool) -> str:
    return (
        (f"_bs{batch}" if batch != 1 else "") + (f"_{precision}" if precision != "fp32" else "") + ("_plugin" if plugin else "")
    )


def calib_cache_name(request) -> str:
    """The calibration cache of an int8/fp8 encoder beside its full graphs: one per encoder (model, shape, clip, batch,
    precision), so graphs of other budgets reuse it: llava15_int8.calib.json."""
    return f"{request.spec.label}{clip_label(request)}{_variant(request.batch, request.precision, False)}.calib.json"


def graph_name(request) -> str:
    return artifact_stem(request) + ".onnx"


def split_stem(model: str, batch: int, precision: str, plugin: bool, clip: str = "") -> str:
    """The folder of a split export: llava15_split, llava15_bs2_fp16_plugin_split, qwen2.5-vl-7b_f8_split, ...
    (defaults add nothing; `clip` is clip_label's)."""
    return f"{model}{clip}{_variant(batch, precision, plugin)}_split"


def external_data_path(path: Path) -> Path:
    return path.with_name(path.name + ".data")
