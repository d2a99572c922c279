"""flashvlm::ResidualPrune in ONNX Runtime (CPU): an onnxruntime-extensions Python op calling the
reference loop, so CI checks the plugin graph's wiring and index parity without TensorRT."""

from __future__ import annotations

import numpy as np
import torch

from flashvlm_export.errors import MissingDependencyError
from flashvlm_export.plugin import PLUGIN_DOMAIN, PLUGIN_NAME
from flashvlm_export.selector.reference import residual_prune

_registered = False


def _run(gram: np.ndarray, residual: np.ndarray, **attrs) -> np.ndarray:
    k_div, step = int(attrs["k_div"]), int(attrs["step"])
    gram_t = torch.from_numpy(np.ascontiguousarray(gram, dtype=np.float32))
    residual_t = torch.from_numpy(np.ascontiguousarray(residual).astype(np.int64))
    kept = [residual_prune(g, r, k_div, step).numpy() for g, r in zip(gram_t, residual_t, strict=True)]
    return np.stack(kept).astype(np.int32)


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
        _registered = True
    return get_library_path()


def session_options():
    """SessionOptions that can run graphs holding flashvlm::ResidualPrune nodes."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(register())
    return options
