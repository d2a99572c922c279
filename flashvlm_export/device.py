"""GPU facts from the CUDA driver (name, compute capability): no TensorRT, no torch, works on Jetson and x86-64."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import lru_cache

from flashvlm_export.errors import MissingDependencyError

CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7" Orin, "8.0" A100, "9.0" H100/H200, "11.0" Thor under CUDA 13

    @property
    def cuda_arch(self) -> str:
        """The CMAKE_CUDA_ARCHITECTURES / sm_XX number: "8.7" -> "87", "11.0" -> "110"."""
        return self.compute_capability.replace(".", "")


@lru_cache(maxsize=1)
def gpu_info(device: int = 0) -> GpuInfo:
    """GPU `device`'s name and compute capability through the CUDA driver API."""
    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            cuda = ctypes.CDLL(name)
            break
        except OSError:
            continue
    else:
        raise MissingDependencyError(
            "no CUDA driver (libcuda.so.1) on this machine: this step needs an NVIDIA GPU and its driver"
        )
    if cuda.cuInit(0) != 0:
        raise MissingDependencyError("the CUDA driver found no usable GPU (cuInit failed)")
    handle = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(handle), device) != 0:
        raise MissingDependencyError(f"no CUDA device {device}")
    buffer = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(buffer, 256, handle)
    major, minor = ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGetAttribute(ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, handle)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, handle)
    return GpuInfo(buffer.value.decode(), f"{major.value}.{minor.value}")
