"""What TensorRT and which GPU this process has: lazy import, version, GPU name and compute capability."""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from functools import lru_cache

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


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7" for Orin, "8.0" for A100, "9.0" for H100/H200


@lru_cache(maxsize=1)
def gpu_info(device: int = 0) -> GpuInfo:
    """GPU 0's name and compute capability through the CUDA driver API (works on Jetson and x86-64)."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise MissingDependencyError("no CUDA driver (libcuda.so.1) on this machine: TensorRT engines need an NVIDIA GPU")
    if cuda.cuInit(0) != 0:
        raise MissingDependencyError("the CUDA driver found no usable GPU (cuInit failed)")
    handle = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        raise MissingDependencyError(f"no CUDA device {device}")
    buffer = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(buffer, 256, handle)
    major, minor = ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, handle)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, handle)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
    return GpuInfo(buffer.value.decode(), f"{major.value}.{minor.value}")


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
