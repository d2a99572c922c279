"""What TensorRT and which GPU this process has: lazy import, version, GPU name and compute capability."""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass
from functools import lru_cache

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
