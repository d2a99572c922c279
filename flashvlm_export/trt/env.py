"""Which TensorRT this process has: lazy import, major version, plugin library loading (GPU facts: device.py)."""

from __future__ import annotations

import platform

from flashvlm_export.errors import MissingDependencyError, UsageError


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


def load_plugin_library(trt, library) -> str:
    """Register libflashvlm_plugins.so in TensorRT's registry through IPluginRegistry::loadLibrary.

    loadLibrary dlopens the library, calls its getCreators and registers the creator
    (NvInferRuntimeCommon.h; python binding `load_library`, python/src/infer/pyPlugin.cpp on
    release/10.3 and release/11.1). It "fails and returns nullptr if any of the plugins are already
    registered", so a creator that is already there (libflashvlm_plugins_register.so loaded earlier in
    this process, e.g. by Polygraphy's --plugins) is used as it is. Returns how the creator got there.
    """
    from pathlib import Path

    from flashvlm_export.plugin import PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION

    if Path(library).name.startswith("libflashvlm_plugins_register"):
        raise UsageError(
            f"{library} is the registering library for tools that only dlopen (polygraphy --plugins, trtexec "
            "--staticPlugins); give TensorRT's loader libflashvlm_plugins.so from the same folder"
        )
    registry = trt.get_plugin_registry()
    creator_id = (PLUGIN_NAME, PLUGIN_VERSION, PLUGIN_NAMESPACE)
    if registry.get_creator(*creator_id) is not None:
        return "already registered"
    if registry.load_library(str(library)) is None or registry.get_creator(*creator_id) is None:
        raise MissingDependencyError(
            f"TensorRT's registry.load_library({library}) registered no {PLUGIN_NAMESPACE}::{PLUGIN_NAME} "
            f"v{PLUGIN_VERSION} creator; rebuild the library for this TensorRT with flashvlm-export build-plugin"
        )
    return "registry.load_library"
