"""The sidecar record next to an engine (`X.plan` -> `X.json`): what the runner and `parity --engine` check.

One function builds the record (`engine_record`), for engines flashvlm-export builds itself
(trt/build.py) and for engines trtexec built (`flashvlm-export sidecar`, `record_trtexec_engine`).
"""

from __future__ import annotations

import os
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.artifact_paths import input_file
from flashvlm_export.artifacts.files import sha256_of
from flashvlm_export.artifacts.ownership import PRODUCER, check_replaceable
from flashvlm_export.errors import FlashVLMError, UsageError


def engine_record(
    *,
    engine_path: Path,
    onnx_path: Path,
    graph_meta: dict[str, str],
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: str,
    precision_path: str,
    plugin_library: Path | None,
    built_by: str,
    build_seconds: float | None,
) -> dict:
    """The sidecar record of `engine_path`, built from `onnx_path` (its flashvlm metadata `graph_meta`)."""
    from flashvlm_export.plugin import PLUGIN_ID

    return {
        "engine": engine_path.name,
        "engine_sha256": sha256_of(engine_path),
        "producer": PRODUCER,  # this record's writer (artifacts/ownership.py); the engine's is built_by
        "built_by": built_by,  # "flashvlm-export" or "trtexec"
        "flashvlm_export_version": __version__,
        "tensorrt_version": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": compute_capability,
        "precision": graph_meta.get("precision", "fp32"),
        "precision_path": precision_path,
        "model": graph_meta.get("model"),
        "budget": int(graph_meta.get("budget", 0)),
        "batch": int(graph_meta.get("batch", 1)),
        "t_max": int(graph_meta.get("t_max", 0)),
        "graph_kind": graph_meta.get("graph"),
        "plugin": plugin_library is not None,
        "plugin_version": PLUGIN_ID if plugin_library is not None else None,
        "plugin_library_sha256": sha256_of(plugin_library) if plugin_library is not None else None,
        "onnx": os.path.relpath(onnx_path, engine_path.parent),  # read back only inside the engine's folder (artifact_paths)
        "onnx_sha256": sha256_of(onnx_path),
        "onnx_metadata": graph_meta,
        "build_seconds": None if build_seconds is None else round(build_seconds, 1),
    }


def io_mismatch(engine_io: set[str], graph_io: set[str]) -> str | None:
    """None when an engine's I/O tensors are the graph's inputs and outputs, else what differs."""
    if engine_io == graph_io:
        return None
    parts = []
    if graph_io - engine_io:
        parts.append(f"the graph has {sorted(graph_io - engine_io)} which the engine lacks")
    if engine_io - graph_io:
        parts.append(f"the engine has {sorted(engine_io - graph_io)} which the graph lacks")
    return "; ".join(parts)


def check_sidecar_request(engine: Path, onnx_path: Path, force: bool) -> tuple[object, dict[str, str]]:
    """Everything `flashvlm-export sidecar` can check without TensorRT; returns the graph and its metadata."""
    from flashvlm_export.artifact_paths import load_graph
    from flashvlm_export.artifacts.sidecar import sidecar_path
    from flashvlm_export.export.metadata import metadata_of
    from flashvlm_export.trt.precision import precision_plan

    input_file(engine, f"engine {engine}", f"build it first (trtexec --saveEngine={engine} ...)")  # a folder: named so
    if engine.suffix != ".plan":
        raise UsageError(f"--engine {engine} must end in .plan (its sidecar is the same name with .json)")
    target = sidecar_path(engine)
    if os.path.lexists(target) and not force:
        raise UsageError(f"{target} already exists; pass --force to overwrite it")
    check_replaceable(target, f"move it away (an engine's sidecar is its name with .json) or rename {engine.name}")
    model = load_graph(onnx_path)
    meta = metadata_of(model)
    if "budget" not in meta or "graph" not in meta:
        raise UsageError(f"{onnx_path} lacks flashvlm metadata; pass the graph flashvlm-export exported")
    precision_plan(model).check(onnx_path)
    return model, meta


def record_trtexec_engine(
    engine: Path, onnx_path: Path, plugin_library: str | None = None, force: bool = False, log=print
) -> dict:
    """Write the sidecar of an engine trtexec built from `onnx_path`, after loading it with this TensorRT."""
    from flashvlm_export.artifacts.placement import write_json_atomic
    from flashvlm_export.artifacts.sidecar import sidecar_path
    from flashvlm_export.device import gpu_info
    from flashvlm_export.trt.env import import_tensorrt, load_plugin_library

    model, meta = check_sidecar_request(engine, onnx_path, force)
    trt = import_tensorrt()
    gpu = gpu_info()
    library = None
    if meta.get("plugin") == "1":
        from flashvlm_export.plugin.build import find_plugin_library

        library = find_plugin_library(plugin_library)
        load_plugin_library(trt, library)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    loaded = runtime.deserialize_cuda_engine(engine.read_bytes())
    if loaded is None:
        raise FlashVLMError(
            f"TensorRT {trt.__version__} cannot load {engine} on {gpu.name}; rebuild it on this machine with this TensorRT"
        )
    engine_io = {loaded.get_tensor_name(i) for i in range(loaded.num_io_tensors)}
    graph_io = {v.name for v in model.graph.input} | {v.name for v in model.graph.output}
    differs = io_mismatch(engine_io, graph_io)
    if differs:
        raise UsageError(f"{engine} was not built from {onnx_path}: {differs}; pass the graph trtexec built it from")
    record = engine_record(
        engine_path=engine,
        onnx_path=onnx_path,
        graph_meta=meta,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision_path="built by trtexec, flags not recorded (docs/DEPLOY.md's recipe builds --stronglyTyped)",
        plugin_library=library,
        built_by="trtexec",
        build_seconds=None,
    )
    write_json_atomic(sidecar_path(engine), record)
    log(f"Sidecar: wrote {sidecar_path(engine)} (TensorRT {trt.__version__}, {gpu.name}, K={record['budget']})")
    return record
