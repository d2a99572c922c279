"""Build a TensorRT engine from an exported graph, with a sidecar JSON record.

Precision paths, chosen by the installed TensorRT:
- TensorRT 11+: strongly typed network. The graph's own types decide: with --precision fp16/bf16
  the encoder and projector are already fp16/bf16 behind explicit casts; the selector is fp32.
- TensorRT 10 (JetPack 6 ships 10.3): weakly typed. FP16/BF16 builder flag, and every layer whose
  outputs are not fp16/bf16 (the selector, the casts back) constrained to fp32 with
  OBEY_PRECISION_CONSTRAINTS.
TF32 is switched off in both: it would round the selector's Gram matrix and break index parity.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.artifacts import atomic_outputs, human_size, sidecar_path, write_json_atomic
from flashvlm_export.device import gpu_info
from flashvlm_export.errors import FlashVLMError
from flashvlm_export.trt.env import import_tensorrt, load_plugin_library, tensorrt_major

REDUCED = {"fp16": "FP16", "bf16": "BF16"}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _progress_monitor(trt, log):
    class Progress(trt.IProgressMonitor):
        """Logs each top-level build phase and its duration."""

        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.started = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                log(f"TensorRT: {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name, step):
            return True  # never cancel

        def phase_finish(self, phase_name):
            start = self.started.pop(phase_name, None)
            if start is not None and time.perf_counter() - start > 1.0:
                log(f"TensorRT: {phase_name} done {time.perf_counter() - start:.1f}s")

    return Progress()


def _constrain_selector_to_fp32(trt, network) -> int:
    """TensorRT 10 weakly typed: pin every layer that produces only non-reduced tensors to fp32."""
    reduced = {trt.float16, getattr(trt, "bfloat16", trt.float16)}
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        if any(t.dtype in reduced for t in outputs):
            continue  # encoder / projector layers run in the reduced type
        if all(t.dtype == trt.float32 for t in outputs):
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    return pinned


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    graph_meta: dict[str, str],
    precision: str = "fp32",
    plugin_library: Path | None = None,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    log=print,
) -> dict:
    """Parse, configure, build and save `engine_path` + sidecar; returns the sidecar record."""
    trt = import_tensorrt()
    gpu = gpu_info()
    major = tensorrt_major(trt)
    logger = trt.Logger(trt.Logger.WARNING)
    if plugin_library is not None:
        load_plugin_library(trt, plugin_library)
    builder = trt.Builder(logger)
    strongly_typed = major >= 11
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    start = time.perf_counter()
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise FlashVLMError(f"TensorRT could not parse {onnx_path}: {errors}")
    log(f"TensorRT {trt.__version__}: parsed {onnx_path.name} ({network.num_layers} layers) {time.perf_counter() - start:.1f}s")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if strongly_typed:
        path = f"strongly typed (TensorRT {major}): the graph's casts set the {precision} encoder, the selector is fp32"
    elif precision in REDUCED:
        config.set_flag(getattr(trt.BuilderFlag, REDUCED[precision]))
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _constrain_selector_to_fp32(trt, network)
        path = f"weakly typed (TensorRT {major}): {REDUCED[precision]} flag, {pinned} selector layers constrained to fp32"
    else:
        path = f"weakly typed (TensorRT {major}): fp32"
    log(f"TensorRT: precision path {path}")

    if timing_cache is not None:
        data = timing_cache.read_bytes() if timing_cache.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(data), False)
        log(f"TensorRT: timing cache {timing_cache} ({'reused, ' + human_size(len(data)) if data else 'new'})")
    config.progress_monitor = _progress_monitor(trt, log)

    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise FlashVLMError(f"TensorRT failed to build {engine_path.name}; see the TensorRT messages above")
    build_seconds = time.perf_counter() - start

    from flashvlm_export.plugin import PLUGIN_ID

    record = {
        "engine": engine_path.name,
        "flashvlm_export_version": __version__,
        "tensorrt_version": trt.__version__,
        "gpu": gpu.name,
        "compute_capability": gpu.compute_capability,
        "precision": precision,
        "precision_path": path,
        "model": graph_meta.get("model"),
        "budget": int(graph_meta.get("budget", 0)),
        "batch": int(graph_meta.get("batch", 1)),
        "t_max": int(graph_meta.get("t_max", 0)),
        "graph_kind": graph_meta.get("graph"),
        "plugin": plugin_library is not None,
        "plugin_version": PLUGIN_ID if plugin_library is not None else None,
        "plugin_library_sha256": sha256_of(plugin_library) if plugin_library is not None else None,
        "onnx": str(onnx_path),
        "onnx_sha256": sha256_of(onnx_path),
        "onnx_metadata": graph_meta,
        "build_seconds": round(build_seconds, 1),
    }
    with atomic_outputs([engine_path]) as (temp,):
        temp.write_bytes(bytes(serialized))
    write_json_atomic(sidecar_path(engine_path), record)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([timing_cache]) as (temp,):
            temp.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"TensorRT: engine built {build_seconds:.1f}s, saved as '{engine_path}' ({human_size(engine_path.stat().st_size)})")
    return record
