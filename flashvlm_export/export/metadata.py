"""A graph's metadata: what it holds, how it is written, read back and typed, in one place.

An exported graph carries everything needed to rebuild its reference (model, budget, T_max, batch,
every selector hyperparameter, where the weights came from) as ONNX metadata_props, which are
strings. Export writes them here (`request_metadata`, `encoder_metadata`, `stamped`); parity, run,
the manifest and trt read them here (`graph_metadata` from a path without the weights, `metadata_of`
from a ModelProto); the sidecar keeps them typed (`typed_values`); and a full or selector graph's
request is rebuilt from them, checked key by key (`request_fields`, for export/graphs.py's
`request_from_metadata`).

Requests are taken as they come (ExportRequest and EncoderRequest of export/graphs.py): this module
imports no torch, so trt and the manifest read metadata without it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.artifact_paths import load_graph
from flashvlm_export.artifacts.ownership import PRODUCER
from flashvlm_export.errors import UsageError, arg
from flashvlm_export.export.options import ENCODER_PRECISIONS as PRECISION_NAMES
from flashvlm_export.models.registry import get_spec
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.schedule import check_budget_range

BOOL_KEYS = ("plugin",)  # written as "0" / "1"
REEXPORT = "re-export the graph with flashvlm-export"
_INT = re.compile(r"-?\d+\Z")


# ---------------------------------------------------------------- writing


def _strings(values: dict) -> dict[str, str]:
    return {key: str(value) for key, value in values.items()}


def encoder_metadata(request, weights: str | None) -> dict[str, str]:
    """The metadata of a split export's encoder graph (an EncoderRequest)."""
    s = request.spec
    values = dict(
        graph=request.kind,
        model=s.name,
        batch=request.batch,
        n_tokens=request.tokens,
        image_size=s.shape_text,
        vision_hidden=s.vision_hidden,
        text_hidden=s.text_hidden,
        precision=request.precision,
    )
    if request.frames is not None:
        values["frames"] = request.frames
    values.update(_grid(s))
    values.update(_calibration(request))
    if weights is not None:
        values["weights"] = weights
    return _strings(values)


def _calibration(request) -> dict:
    """An int8/fp8 encoder records its calibration set: size, sha256, and whether the tool drew it."""
    calibration = getattr(request, "calibration", None)
    return {} if calibration is None else calibration.metadata()


def _grid(spec) -> dict:
    """A model cut into crops records its grid ("2x2") and crop count; others record nothing more."""
    return {} if spec.grid is None else {"grid": f"{spec.grid[0]}x{spec.grid[1]}", "crops": spec.crops}


def request_metadata(request, weights: str | None) -> dict[str, str]:
    """The metadata of a full or selector graph (an ExportRequest), its round schedule included.

    A budget-range graph also records budget_min and budget_max (budget is budget_max, its outputs' width); its
    k_imp, k_div and step are the largest budget's, n_rounds the rounds the graph runs (the smallest budget's).
    """
    schedule = request.schedule
    widest = schedule.of(request.budget) if request.ranged else schedule
    values = dict(
        graph=request.kind,
        model=request.spec.name,
        budget=request.budget,
        t_max=request.t_max,
        batch=request.batch,
        n_tokens=request.tokens,
        image_size=request.spec.shape_text,
        vision_hidden=request.spec.vision_hidden,
        text_hidden=request.spec.text_hidden,
        k_imp=widest.k_imp,
        k_div=widest.k_div,
        step=widest.step,
        n_rounds=schedule.n_rounds,
        selector_config=json.dumps(request.config.to_dict(), sort_keys=True),
        plugin=int(request.plugin),
        precision=request.precision,
    )
    values.update(_grid(request.spec))
    values.update(_calibration(request))
    if request.ranged:
        values.update(budget_min=request.budget_min, budget_max=request.budget)
    if request.frames is not None:  # a clip: k_imp, k_div and step are one group's under per-group
        values.update(
            frames=request.frames,
            video_budget=request.video_budget,
            temporal_groups=request.clip.groups,
            group_tokens=request.clip.group_tokens,
            fps=request.fps,
            second_per_grid_t=request.second_per_grid_t,
        )
    if request.plugin:
        from flashvlm_export.plugin import PLUGIN_ID

        values["plugin_version"] = PLUGIN_ID
    if weights is not None:
        values["weights"] = weights
    return _strings(values)


def stamped(metadata: dict[str, str], opset: int) -> dict[str, str]:
    """What a graph's metadata_props hold: the producer, its version and the opset, then the request's own."""
    return {"producer": PRODUCER, "flashvlm_export_version": __version__, "opset": str(opset), **metadata}


# ---------------------------------------------------------------- reading


def metadata_of(model) -> dict[str, str]:
    """The metadata_props of a loaded ModelProto."""
    return {prop.key: prop.value for prop in model.metadata_props}


def graph_metadata(path: Path) -> dict[str, str]:
    """The metadata of the graph at `path`, read without its weights."""
    return metadata_of(load_graph(path))


# ---------------------------------------------------------------- typed values


def typed_values(metadata: dict[str, str]) -> dict:
    """The metadata with its types back (ints, bools, the selector config object), as the sidecar keeps it."""
    typed: dict = {}
    for key, value in metadata.items():
        if not isinstance(value, str):
            typed[key] = value
        elif key in BOOL_KEYS and value in ("0", "1"):
            typed[key] = value == "1"
        elif _INT.match(value):
            typed[key] = int(value)
        elif value.startswith("{"):
            try:
                typed[key] = json.loads(value)
            except ValueError:
                typed[key] = value
        else:
            typed[key] = value
    return typed


def request_fields(meta: dict[str, str], source: str) -> dict:
    """The fields of the ExportRequest a full or selector graph was exported from, checked key by key; malformed
    metadata is a one-line error, and so is a split's encoder graph (its manifest describes it)."""
    if meta.get("graph") == "encoder":
        raise UsageError(
            f"{source} is the encoder graph of a split export; pass its manifest instead ({arg('manifest', 'DIR/manifest.json')})"
        )
    key = "?"

    def field(name: str) -> str:
        nonlocal key
        key = name
        value = meta[name]
        if not isinstance(value, str):
            raise TypeError(f"{type(value).__name__}, not a string")
        return value

    def whole(name: str, low: int = 1) -> int:
        value = int(field(name))
        if value < low:
            raise ValueError(f"{value} < {low}")
        return value

    try:
        graph = field("graph")
        if graph not in ("selector", "full"):
            raise ValueError(f"{graph!r} is neither 'selector' nor 'full'")
        spec = get_spec(field("model"))
        key = "image_size"
        spec = spec.at_image_size(meta.get("image_size", spec.shape_text), "image_size")
        key = "grid"
        spec = spec.at_grid(meta.get("grid"), "grid")
        budget, t_max, batch, n_tokens = whole("budget"), whole("t_max"), whole("batch"), whole("n_tokens", 2)
        key = "budget"
        check_budget_range(budget, n_tokens, where=f" for n_tokens {n_tokens}")
        budget_min = None
        if "budget_min" in meta or "budget_max" in meta:
            key = "budget_min"
            budget_min = whole("budget_min")
            check_budget_range(budget_min, n_tokens, "budget_min", f" for n_tokens {n_tokens}")
            key = "budget_max"
            if whole("budget_max") != budget or budget_min >= budget:
                raise ValueError(
                    f"range {budget_min}..{meta['budget_max']} with budget {budget}: want budget_min < budget_max = budget"
                )
        key = "plugin"
        plugin = meta.get("plugin", "0")
        if plugin not in ("0", "1"):
            raise ValueError(f"{plugin!r} is neither '0' nor '1'")
        key = "precision"
        precision = meta.get("precision", "fp32")
        if precision not in PRECISION_NAMES:
            raise ValueError(f"{precision!r} is not one of {', '.join(PRECISION_NAMES)}")
        config = SelectorConfig.from_dict(json.loads(field("selector_config")))
        clip = {}
        if "frames" in meta:
            frames = whole("frames", 2)
            if not spec.temporal_patch:
                raise ValueError(f"{spec.name} has no video path, so a clip's frames do not apply")
            clip = dict(frames=frames, video_budget=field("video_budget"), fps=float(field("fps")))
            key = "fps"
            if not (math.isfinite(clip["fps"]) and clip["fps"] > 0):
                raise ValueError(f"{clip['fps']} is not a positive frame rate")
            key = "n_tokens"
            step = spec.temporal_patch
            groups = clip["frames"] // step
            if clip["frames"] % step or n_tokens != groups * spec.n_tokens:
                raise ValueError(f"{n_tokens} is not {clip['frames']} frames / {step} x {spec.n_tokens} tokens")
            n_tokens = None  # a clip's N follows from its frames
    except KeyError as exc:
        raise UsageError(f"{source} lacks flashvlm metadata {exc}; {REEXPORT}") from None
    except (ValueError, TypeError, UsageError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UsageError(f"{source} has malformed flashvlm metadata {key!r} ({reason}); {REEXPORT}") from None
    return dict(
        spec=spec,
        budget=budget,
        t_max=t_max,
        batch=batch,
        config=config,
        selector_only=graph == "selector",
        n_tokens=n_tokens,
        plugin=plugin == "1",
        precision=precision,
        budget_min=budget_min,
        **clip,
    )
