"""flashvlm::ResidualPrune and flashvlm::ResidualPruneRange in ONNX Runtime (CPU): onnxruntime-extensions
Python ops calling the reference loop, so CI checks the plugin graphs' wiring and index parity without TensorRT.

The range op follows the plugin's own rule per image (csrc/residualPruneRangePlugin.h): |R0| is where the
list's -1 padding starts, K_imp = N - |R0|, K_div = K - K_imp, the step raised by max_rounds; a malformed
list or a budget outside [k_min, k_max] gives an all -1 row, as the plugin does."""

from __future__ import annotations

import math

import numpy as np
import torch

from flashvlm_export.errors import MissingDependencyError
from flashvlm_export.plugin import PLUGIN_DOMAIN, PLUGIN_NAME, RANGE_PLUGIN_NAME
from flashvlm_export.selector.reference import residual_prune

_registered = False


def _run(gram: np.ndarray, residual: np.ndarray, **attrs) -> np.ndarray:
    k_div, step = int(attrs["k_div"]), int(attrs["step"])
    gram_t = torch.from_numpy(np.ascontiguousarray(gram, dtype=np.float32))
    residual_t = torch.from_numpy(np.ascontiguousarray(residual).astype(np.int64))
    kept = [residual_prune(g, r, k_div, step).numpy() for g, r in zip(gram_t, residual_t, strict=True)]
    return np.stack(kept).astype(np.int32)


PAD_TOKEN = -1


def _range_image(gram: torch.Tensor, residual: np.ndarray, budget: int, attrs: dict) -> np.ndarray | None:
    """One image's kept residual (K_div,) by the plugin's rule, or None where the plugin rejects the image."""
    n, width = gram.shape[0], residual.shape[0]
    padding = np.flatnonzero(residual == PAD_TOKEN)
    size = int(padding[0]) if padding.size else width  # |R0|
    ids, tail = residual[:size], residual[size:]
    if (ids < 0).any() or (ids >= n).any() or (tail != PAD_TOKEN).any():
        return None
    k_div = budget - (n - size)
    if not (attrs["k_min"] <= budget <= attrs["k_max"] and 1 <= k_div <= min(size, attrs["k_div_max"])):
        return None
    step, cap = attrs["step"], attrs["max_rounds"]
    if cap > 0:
        step = max(step, math.ceil((size - k_div) / cap))
    return residual_prune(gram, torch.from_numpy(ids.astype(np.int64)), k_div, step).numpy()


def _run_range(gram: np.ndarray, residual: np.ndarray, budget: np.ndarray, **attrs) -> np.ndarray:
    attrs = {name: int(attrs[name]) for name in ("k_min", "k_max", "k_div_max", "step", "max_rounds")}
    gram_t = torch.from_numpy(np.ascontiguousarray(gram, dtype=np.float32))
    residual = np.ascontiguousarray(residual).astype(np.int64)
    kept = np.full((residual.shape[0], attrs["k_div_max"]), PAD_TOKEN, dtype=np.int32)
    for b, (g, r, k) in enumerate(zip(gram_t, residual, np.asarray(budget).tolist(), strict=True)):
        row = _range_image(g, r, int(k), attrs)
        if row is not None:
            kept[b, : len(row)] = row
    return kept


def register() -> str:
    """Register the Python op once; returns the onnxruntime-extensions library path for SessionOptions."""
    global _registered
    try:
        from onnxruntime_extensions import PyCustomOpDef, get_library_path, onnx_op
    except ImportError:
        raise MissingDependencyError(
            "the plugin graph needs onnxruntime-extensions to run in ONNX Runtime: pip install 'flashvlm-export[plugin-ort]'"
        ) from None
    if not _registered:
        onnx_op(
            op_type=f"{PLUGIN_DOMAIN}::{PLUGIN_NAME}",
            inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32],
            outputs=[PyCustomOpDef.dt_int32],
            attrs={
                "k_div": PyCustomOpDef.dt_int64,
                "step": PyCustomOpDef.dt_int64,
                "plugin_version": PyCustomOpDef.dt_string,
                "plugin_namespace": PyCustomOpDef.dt_string,
            },
        )(_run)
        onnx_op(
            op_type=f"{PLUGIN_DOMAIN}::{RANGE_PLUGIN_NAME}",
            inputs=[PyCustomOpDef.dt_float, PyCustomOpDef.dt_int32, PyCustomOpDef.dt_int32],
            outputs=[PyCustomOpDef.dt_int32],
            attrs={
                **{name: PyCustomOpDef.dt_int64 for name in ("k_min", "k_max", "k_div_max", "step", "max_rounds")},
                "plugin_version": PyCustomOpDef.dt_string,
                "plugin_namespace": PyCustomOpDef.dt_string,
            },
        )(_run_range)
        _registered = True
    return get_library_path()


def session_options():
    """SessionOptions that can run graphs holding flashvlm::ResidualPrune or ResidualPruneRange nodes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(register())
    return options
