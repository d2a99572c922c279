"""The kernel's CPU twin (csrc/residualPruneCpu.cpp), built on demand with the system C++ compiler
and called through ctypes, so CI tests the kernel's round and rank logic without a GPU."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from flashvlm_export.errors import BuildError, FlashVLMError, MissingDependencyError
from flashvlm_export.plugin import SOURCE_DIR

CSRC = SOURCE_DIR / "csrc"
_library = None


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "flashvlm-export"


def build_cpu_library(compiler: str | None = None) -> Path:
    """Compile libflashvlm_prune_cpu.so once per source version (cached by content hash)."""
    sources = [CSRC / "residualPruneCpu.cpp", CSRC / "residualPruneCore.h"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:16]
    target = _cache_dir() / f"libflashvlm_prune_cpu-{digest}.so"
    if target.exists():
        return target
    compiler = compiler or os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise MissingDependencyError("no C++ compiler (g++) to build the kernel's CPU twin; install g++")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        temp = Path(scratch) / target.name
        cmd = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", f"-I{CSRC}", str(sources[0]), "-o", str(temp)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            raise BuildError(f"building the CPU twin failed: {run.stderr.strip().splitlines()[-1]}")
        os.replace(temp, target)
    return target


def _lib():
    global _library
    if _library is None:
        lib = ctypes.CDLL(str(build_cpu_library()))
        i32, ptr = ctypes.c_int32, ctypes.c_void_p
        lib.flashvlm_residual_prune_cpu.argtypes = [ptr, i32, i32, ptr, i32, i32, i32, ptr]
        lib.flashvlm_residual_prune_cpu.restype = i32
        lib.flashvlm_count_rounds.argtypes = [i32, i32, i32]
        lib.flashvlm_count_rounds.restype = i32
        _library = lib
    return _library


def residual_prune_cpu(gram: np.ndarray, residual: np.ndarray, k_div: int, step: int) -> np.ndarray:
    """gram (B, N, N) float32, residual (B, R0) -> kept (B, k_div) int32, through the C++ twin."""
    gram = np.ascontiguousarray(gram, dtype=np.float32)
    residual = np.ascontiguousarray(residual, dtype=np.int32)
    batch, n, _ = gram.shape
    kept = np.empty((batch, k_div), dtype=np.int32)
    status = _lib().flashvlm_residual_prune_cpu(
        gram.ctypes.data, batch, n, residual.ctypes.data, residual.shape[1], k_div, step, kept.ctypes.data
    )
    if status != 0:
        raise FlashVLMError(f"residual_prune_cpu rejected its inputs (status {status})")
    return kept


def count_rounds_cpu(residual_size: int, k_div: int, step: int) -> int:
    return int(_lib().flashvlm_count_rounds(residual_size, k_div, step))
