"""`flashvlm-export build-plugin`: CMake-build libflashvlm_plugins.so against a TensorRT include dir."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

from flashvlm_export.errors import BuildError, MissingDependencyError, UsageError
from flashvlm_export.plugin import SOURCE_DIR

LIBRARY_NAME = "libflashvlm_plugins.so"
DEFAULT_BUILD_DIR = Path("build/plugin")
INCLUDE_GUESSES = (
    "/usr/include/aarch64-linux-gnu",
    "/usr/include/x86_64-linux-gnu",
    "/usr/include",
    "/usr/local/tensorrt/include",
)


def find_tensorrt_include(explicit: str | None) -> Path:
    candidates = [explicit] if explicit else [os.environ.get("TENSORRT_INCLUDE_DIR"), *INCLUDE_GUESSES]
    for candidate in filter(None, candidates):
        if (Path(candidate) / "NvInferRuntime.h").is_file():
            return Path(candidate)
    where = explicit or "the usual places (" + ", ".join(INCLUDE_GUESSES) + ")"
    raise UsageError(f"no NvInferRuntime.h in {where}; pass --tensorrt-include DIR (TensorRT's include/ folder)")


X86_FALLBACK_ARCHS = "80;86;89;90"  # A100, RTX 30xx/A10, Ada (L4, L40), Hopper (H100/H200)


def default_cuda_arch() -> tuple[str, str]:
    """(CMAKE_CUDA_ARCHITECTURES, why): this GPU's own when the CUDA driver can read it.

    Jetson needs its own: Orin is 8.7, Thor is 11.0 under CUDA 13 (10.1 under CUDA 12.8/12.9), so an
    aarch64 machine whose GPU cannot be read must name it. On x86-64 the fallback covers the data-centre
    GPUs from A100 to H200.
    """
    from flashvlm_export.device import gpu_info

    try:
        gpu = gpu_info()
    except MissingDependencyError as exc:
        if platform.machine() == "aarch64":
            raise UsageError(
                f"cannot read this machine's GPU ({exc}); pass --cuda-arch 87 (Jetson Orin) or --cuda-arch 110 "
                "(Jetson Thor, CUDA 13)"
            ) from None
        return X86_FALLBACK_ARCHS, f"no GPU readable here ({exc}), so A100 to H200; pass --cuda-arch for one GPU"
    return gpu.cuda_arch, f"this GPU: {gpu.name}, compute capability {gpu.compute_capability}"


def build_plugin(
    tensorrt_include: str | None,
    build_dir: Path = DEFAULT_BUILD_DIR,
    cuda_arch: str | None = None,
    log=print,
    harness_sources: Path | None = None,
) -> Path:
    """Configure and build with CMake; returns the path of libflashvlm_plugins.so.

    harness_sources: the repository's tests/csrc, to build the GPU test harness too (scripts/plugin_harness.py).
    """
    include = find_tensorrt_include(tensorrt_include)
    cmake = shutil.which("cmake")
    if cmake is None:
        raise MissingDependencyError("cmake is not installed; install cmake >= 3.18 (apt install cmake or pip install cmake)")
    nvcc = shutil.which("nvcc") or next((p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).exists()), None)
    if nvcc is None:
        raise MissingDependencyError("nvcc is not on PATH; install the CUDA toolkit or add /usr/local/cuda/bin to PATH")
    arch, why = (cuda_arch, "--cuda-arch") if cuda_arch else default_cuda_arch()
    log(f"Plugin: building for CUDA arch {arch}: {why}")
    configure = [
        cmake,
        "-S",
        str(SOURCE_DIR),
        "-B",
        str(build_dir),
        f"-DTENSORRT_INCLUDE_DIR={include}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
        "-DCMAKE_BUILD_TYPE=Release",
        f"-DFLASHVLM_HARNESS_SOURCES={harness_sources or ''}",
    ]
    for step in (configure, [cmake, "--build", str(build_dir), "-j", str(os.cpu_count() or 2)]):
        run = subprocess.run(step, capture_output=True, text=True)
        if run.returncode != 0:
            tail = (run.stderr or run.stdout).strip().splitlines()[-5:]
            raise BuildError(f"plugin build failed at `{' '.join(step[:2])}`: {' | '.join(tail)}")
    library = build_dir / LIBRARY_NAME
    log(f"Plugin: built {library} (TensorRT headers {include}, CUDA arch {arch})")
    return library


def find_plugin_library(explicit: str | None = None) -> Path:
    """--plugin-lib, else $FLASHVLM_PLUGIN_LIB, else build/plugin/libflashvlm_plugins.so."""
    for candidate in filter(None, (explicit, os.environ.get("FLASHVLM_PLUGIN_LIB"), str(DEFAULT_BUILD_DIR / LIBRARY_NAME))):
        if Path(candidate).is_file():
            return Path(candidate)
    raise UsageError(
        f"plugin library not found ({explicit or DEFAULT_BUILD_DIR / LIBRARY_NAME}); build it with "
        "`flashvlm-export build-plugin` or pass --plugin-lib PATH"
    )
