"""Which TensorRT this process has: lazy import, major version, plugin library loading (GPU facts: device.py)."""

from __future__ import annotations

import ctypes
import platform

from flashvlm_export.errors import MissingDependencyError


def import_tensorrt():
    """`import tensorrt`, or a one-line error that says how to get it on this platform."""
    try:
        import tensorrt
    except ImportError as exc:
        if platform.machine() == "aarch64":
            how = (
                "on Jetson use JetPack's TensorRT (sudo apt install python3-libnvinfer) and a venv made with "
                "--system-site-packages"
            )
        else:
            how = (
                "on x86-64: pip install 'flashvlm-export[trt]' with NVIDIA's package index as pip's --extra-index-url "
                "(tensorrt-cu12 / tensorrt-cu13 pull libnvinfer from there)"
            )
        raise MissingDependencyError(f"TensorRT is not installed ({exc.name or 'tensorrt'} missing): {how}") from None
    return tensorrt


def tensorrt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


def load_plugin_library(trt, library) -> None:
    """Load libflashvlm_plugins.so into TensorRT's registry and check the creator is there."""
    from flashvlm_export.plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    registry = trt.get_plugin_registry()
    if hasattr(registry, "load_library"):
        registry.load_library(str(library))
    else:  # older bindings: the library registers itself at load time
        ctypes.CDLL(str(library))
    getter = getattr(registry, "get_creator", None) or registry.get_plugin_creator
    if getter(PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE) is None:
        raise MissingDependencyError(
            f"{library} loaded but TensorRT has no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} v{PLUGIN_VERSION} creator; "
            "rebuild it with flashvlm-export build-plugin"
        )
