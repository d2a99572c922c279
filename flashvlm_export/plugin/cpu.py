"""The kernel's CPU twin (csrc/residualPruneCpu.cpp), built on demand with the system C++ compiler
and called through ctypes. It runs flashvlm::pruneImage (and, for ResidualPruneRange, pruneImageRange)
from csrc/residualPruneCore.h, the same round body the CUDA kernel compiles (only the loop-to-thread policy differs), so CI tests the
kernel's rounds, rank rule and token-id bounds check without a GPU."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from flashvlm_export.errors import BuildError, MissingDependencyError, UsageError
from flashvlm_export.plugin import SOURCE_DIR

CSRC = SOURCE_DIR / "csrc"
_library = None

# status codes of flashvlm_residual_prune_cpu (residualPruneCore.h)
STATUS_BAD_ARGUMENTS = 1
STATUS_TOKEN_OUT_OF_RANGE = 2
STATUS_BUDGET_REJECTED = 3  # the range twin: a budget outside [k_min, k_max] or one its list cannot give
REJECTED_TOKEN = -1  # every kept slot of an image whose residual list holds an id outside [0, N)


def _cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "flashvlm-export"


def build_cpu_library(compiler: str | None = None) -> Path:
    """Compile libflashvlm_prune_cpu.so once per source version (cached by content hash)."""
    sources = [CSRC / "residualPruneCpu.cpp", CSRC / "residualPruneCore.h"]  # the hash covers the shared body
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
            errors = [line for line in run.stderr.splitlines() if "error" in line] or run.stderr.strip().splitlines()[-1:]
            raise BuildError(f"building the CPU twin failed: {errors[0] if errors else run.returncode}")
        os.replace(temp, target)
    return target


def _lib():
    global _library
    if _library is None:
        lib = ctypes.CDLL(str(build_cpu_library()))
        i32, ptr = ctypes.c_int32, ctypes.c_void_p
        lib.flashvlm_residual_prune_cpu.argtypes = [ptr, i32, i32, ptr, i32, i32, i32, ptr]
        lib.flashvlm_residual_prune_cpu.restype = i32
        lib.flashvlm_residual_prune_range_cpu.argtypes = [ptr, i32, i32, ptr, i32, ptr, i32, i32, i32, i32, i32, ptr]
        lib.flashvlm_residual_prune_range_cpu.restype = i32
        lib.flashvlm_count_rounds.argtypes = [i32, i32, i32]
        lib.flashvlm_count_rounds.restype = i32
        _library = lib
    return _library


def run_twin(gram: np.ndarray, residual: np.ndarray, k_div: int, step: int) -> tuple[int, np.ndarray]:
    """(status, kept (B, k_div) int32) straight from the C++ twin; rejected images hold REJECTED_TOKEN."""
    gram = np.ascontiguousarray(gram, dtype=np.float32)
    residual = np.ascontiguousarray(residual, dtype=np.int32)
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2] or residual.ndim != 2 or residual.shape[0] != gram.shape[0]:
        raise UsageError(f"residual_prune_cpu: gram {gram.shape} and residual {residual.shape} must be (B, N, N) and (B, R0)")
    batch, n, _ = gram.shape
    kept = np.full((batch, max(k_div, 0)), REJECTED_TOKEN, dtype=np.int32)
    status = _lib().flashvlm_residual_prune_cpu(
        gram.ctypes.data, batch, n, residual.ctypes.data, residual.shape[1], k_div, step, kept.ctypes.data
    )
    return int(status), kept


def residual_prune_cpu(gram: np.ndarray, residual: np.ndarray, k_div: int, step: int) -> np.ndarray:
    """gram (B, N, N) float32, residual (B, R0) -> kept (B, k_div) int32, through the C++ twin."""
    residual = np.asarray(residual)
    n = np.shape(gram)[1]
    limits = np.iinfo(np.int32)
    if residual.size and (residual.min() < limits.min or residual.max() > limits.max):
        status = STATUS_TOKEN_OUT_OF_RANGE  # the int32 cast would wrap such an id, perhaps into [0, N)
    else:
        status, kept = run_twin(gram, residual, k_div, step)
    batch = residual.shape[0]
    if status == STATUS_TOKEN_OUT_OF_RANGE:
        rows, cols = np.nonzero((residual < 0) | (residual >= n))
        raise UsageError(
            f"residual_prune_cpu: token id {residual[rows[0], cols[0]]} at residual[{rows[0]}, {cols[0]}] is outside "
            f"[0, {n}) (N = gram.shape[1]); pass ids that index the Gram matrix"
        )
    if status != 0:
        raise UsageError(
            f"residual_prune_cpu: rejected (B={batch}, N={n}, R0={residual.shape[1]}, k_div={k_div}, step={step}); "
            f"needs 1 <= k_div <= R0 <= min(N, 3840) and step >= 1"
        )
    return kept


def count_rounds_cpu(residual_size: int, k_div: int, step: int) -> int:
    return int(_lib().flashvlm_count_rounds(residual_size, k_div, step))


def run_range_twin(
    gram: np.ndarray, residual: np.ndarray, budget: np.ndarray, k_min: int, k_max: int, k_div_max: int, step: int, max_rounds: int
) -> tuple[int, np.ndarray]:
    """The range plugin's body (pruneImageRange) on the CPU: (status, kept (B, k_div_max) int32).

    residual (B, W): each image's R0, then -1; budget (B,). A rejected image's row is all -1; status is the
    last rejection's (STATUS_TOKEN_OUT_OF_RANGE, STATUS_BUDGET_REJECTED), STATUS_BAD_ARGUMENTS for shapes or
    fields the plugin refuses (nothing written), else 0."""
    gram = np.ascontiguousarray(gram, dtype=np.float32)
    residual = np.ascontiguousarray(residual, dtype=np.int32)
    budget = np.ascontiguousarray(budget, dtype=np.int32)
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2] or residual.ndim != 2 or budget.shape != residual.shape[:1]:
        raise UsageError(
            f"residual_prune_range_cpu: gram {gram.shape}, residual {residual.shape} and budget {budget.shape} "
            "must be (B, N, N), (B, W) and (B,)"
        )
    if residual.shape[0] != gram.shape[0]:
        raise UsageError(f"residual_prune_range_cpu: gram has {gram.shape[0]} images, residual {residual.shape[0]}")
    batch, n, _ = gram.shape
    kept = np.full((batch, max(k_div_max, 0)), REJECTED_TOKEN, dtype=np.int32)
    status = _lib().flashvlm_residual_prune_range_cpu(
        gram.ctypes.data, batch, n, residual.ctypes.data, residual.shape[1], budget.ctypes.data,
        k_min, k_max, k_div_max, step, max_rounds, kept.ctypes.data,
    )  # fmt: skip
    return int(status), kept
