"""Load an engine with its sidecar and run it; refuse any mismatch with a clear message."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flashvlm_export.artifact_paths import own_file
from flashvlm_export.artifacts.files import sha256_of
from flashvlm_export.artifacts.sidecar import read_sidecar, sidecar_path
from flashvlm_export.device import gpu_info
from flashvlm_export.errors import UsageError
from flashvlm_export.trt.env import import_tensorrt, load_plugin_library

SIDECAR_KEYS = ("tensorrt_version", "gpu", "compute_capability", "budget", "plugin", "precision", "onnx", "onnx_metadata")


def read_engine_record(engine_path: Path, expect_kind: str | None = None) -> dict:
    """An engine's sidecar record, checked without TensorRT: engine and sidecar present, sha256, graph kind."""
    engine_path = own_file(Path(engine_path), "engine", "engine", "build it with flashvlm-export ... --engine")
    if not os.path.lexists(sidecar_path(engine_path)):
        raise UsageError(
            f"{engine_path} has no sidecar {sidecar_path(engine_path)}; build engines with flashvlm-export ... "
            f"--engine, or record one trtexec built: flashvlm-export sidecar --engine {engine_path} --onnx GRAPH.onnx"
        )
    record = read_sidecar(engine_path, required=SIDECAR_KEYS)
    expected = record.get("engine_sha256")  # sidecars written before it was recorded lack it
    if expected is not None and sha256_of(engine_path) != expected:
        raise UsageError(
            f"{engine_path} is not the engine its sidecar describes (sha256 differs); rebuild it with "
            "flashvlm-export ... --engine, or record a trtexec engine with flashvlm-export sidecar --force"
        )
    if expect_kind is not None and record.get("graph_kind") != expect_kind:
        raise UsageError(
            f"{engine_path} is a {record.get('graph_kind')!r} engine (sidecar graph_kind), the caller expects "
            f"{expect_kind!r}; pass the {expect_kind} engine"
        )
    return record


def check_engine_here(engine_path: Path, record: dict, expect_budget: int | None = None, plugin_library: Path | None = None):
    """The checks that need TensorRT: its version, this GPU, the budget; loads the plugin library the record asks for.

    Returns the `tensorrt` module (imported here, through import_tensorrt: a one-line error where it is absent).
    """
    trt = import_tensorrt()
    rebuild = "rebuild it on this machine with flashvlm-export ... --engine"
    if trt.__version__ != record["tensorrt_version"]:
        raise UsageError(
            f"{engine_path} was built with TensorRT {record['tensorrt_version']}, this is {trt.__version__}; {rebuild}"
        )
    gpu = gpu_info()
    if (gpu.name, gpu.compute_capability) != (record["gpu"], record["compute_capability"]):
        raise UsageError(
            f"{engine_path} was built for {record['gpu']} (sm {record['compute_capability']}), "
            f"this is {gpu.name} (sm {gpu.compute_capability}); {rebuild}"
        )
    if expect_budget is not None and expect_budget != record["budget"]:
        raise UsageError(
            f"{engine_path} keeps K={record['budget']} tokens, the caller expects K={expect_budget}; use the matching engine"
        )
    if record["plugin"]:
        from flashvlm_export.plugin.build import find_plugin_library

        load_plugin_library(trt, find_plugin_library(str(plugin_library) if plugin_library else None))
    return trt


def check_engine(
    engine_path: Path, expect_budget: int | None = None, plugin_library: Path | None = None, expect_kind: str | None = None
) -> dict:
    """Every check an engine passes before it runs (sidecar, sha256, kind, TensorRT, GPU, budget, plugin); its record."""
    record = read_engine_record(Path(engine_path), expect_kind)
    check_engine_here(Path(engine_path), record, expect_budget, plugin_library)
    return record


class EngineRunner:
    """A TensorRT engine checked against its sidecar (same TensorRT, same GPU, plugin present, budget); a backend
    (backend.py) returning every output the engine has."""

    def __init__(self, engine_path: Path, expect_budget: int | None = None, plugin_library: Path | None = None):
        self.record = check_engine(Path(engine_path), expect_budget, plugin_library)
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        self.runner = TrtRunner(EngineFromBytes(Path(engine_path).read_bytes()))
        self.runner.activate()
        self.precision = self.record["precision"]
        self.name = f"tensorrt[{self.record['precision']}{', plugin' if self.record['plugin'] else ''}]"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.runner.infer(feeds, copy_outputs_to_host=True).items()}
