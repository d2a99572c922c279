"""Build a TensorRT engine from an exported graph, with a sidecar JSON record.

One precision path on every supported TensorRT: a strongly typed network. TensorRT 10.x (JetPack
6.1/6.2 and 7.x ship 10.3 and later) takes NetworkDefinitionCreationFlag.STRONGLY_TYPED; TensorRT 11
is always strongly typed (the flag is deprecated and ignored there, and the FP16/BF16 builder flags
are gone). Each layer then computes in the types the graph declares: with --precision fp16/bf16 the
encoder and projector sit behind explicit casts, and the selector, cast back, is fp32. trt/precision.py
reads that decision off the ONNX file and the build refuses a graph whose selector is not fp32.
TF32 is switched off: it would round the selector's Gram matrix and break index parity.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from flashvlm_export.artifact_paths import load_graph
from flashvlm_export.artifacts.files import human_size
from flashvlm_export.artifacts.placement import atomic_outputs, write_json_atomic
from flashvlm_export.artifacts.sidecar import sidecar_path
from flashvlm_export.device import gpu_info
from flashvlm_export.errors import FlashVLMError, MissingDependencyError, UsageError
from flashvlm_export.trt.env import import_tensorrt, load_plugin_library, tensorrt_major
from flashvlm_export.trt.precision import compute_type, precision_plan
from flashvlm_export.trt.sidecar import engine_record


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


def strongly_typed_flags(trt) -> int:
    """create_network flags for a strongly typed network on this TensorRT, or a one-line error."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if tensorrt_major(trt) >= 11:
        return 0  # strongly typed is the only mode
    raise MissingDependencyError(
        f"TensorRT {trt.__version__} has no strongly typed networks; flashvlm-export needs TensorRT 10 or newer"
    )


def _layer_types(trt, network) -> Counter:
    """The same classification as the ONNX check, on the parsed TensorRT layers (for the build log)."""
    names = {trt.float32: "fp32", trt.float16: "fp16"}
    if hasattr(trt, "bfloat16"):
        names[trt.bfloat16] = "bf16"
    counts = Counter()
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        tensors = [layer.get_input(j) for j in range(layer.num_inputs)]
        tensors += [layer.get_output(j) for j in range(layer.num_outputs)]
        counts[compute_type([names.get(t.dtype, "other") for t in tensors if t is not None])] += 1
    return counts


FP8_FROM = (8, 9)  # compute capability of the first GPUs with FP8 tensor cores (Ada); Hopper 9.0, Thor 11.0; Orin 8.7


def check_fp8_support(precision: str, gpu) -> None:
    """An FP8 graph needs FP8 tensor cores: refused in one line on an older GPU (Jetson Orin, A100), naming int8."""
    major, minor = (int(v) for v in gpu.compute_capability.split(".")[:2])
    if precision == "fp8" and (major, minor) < FP8_FROM:
        raise UsageError(
            f"--precision fp8: this GPU ({gpu.name}, compute capability {gpu.compute_capability}) has no FP8 (it needs "
            f"{FP8_FROM[0]}.{FP8_FROM[1]} or newer: Ada, Hopper, Thor; Jetson Orin is 8.7); export --precision int8 for it"
        )


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
    """Check, parse, configure, build and save `engine_path` + sidecar; returns the sidecar record."""
    plan = precision_plan(load_graph(onnx_path))
    plan.check(onnx_path)
    trt = import_tensorrt()
    gpu = gpu_info()
    check_fp8_support(precision, gpu)
    logger = trt.Logger(trt.Logger.WARNING)
    if plugin_library is not None:
        load_plugin_library(trt, plugin_library)
    builder = trt.Builder(logger)
    network = builder.create_network(strongly_typed_flags(trt))
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
    layers = ", ".join(f"{n} {kind}" for kind, n in sorted(_layer_types(trt, network).items()))
    path = f"strongly typed (TensorRT {trt.__version__}), {precision} graph: the graph's types decide; {plan.summary()}"
    log(f"TensorRT: precision path {path}")
    log(f"TensorRT: parsed layers compute in: {layers}")

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

    with atomic_outputs([engine_path]) as (temp,):
        temp.write_bytes(bytes(serialized))
    record = engine_record(
        engine_path=engine_path,
        onnx_path=onnx_path,
        graph_meta=graph_meta,
        tensorrt_version=trt.__version__,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        precision_path=path,
        plugin_library=plugin_library,
        built_by="flashvlm-export",
        build_seconds=build_seconds,
    )
    write_json_atomic(sidecar_path(engine_path), record)
    if timing_cache is not None:
        timing_cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_outputs([timing_cache], own_only=False) as (temp,):  # the user's cache, updated as asked
            temp.write_bytes(bytes(config.get_timing_cache().serialize()))
    log(f"TensorRT: engine built {build_seconds:.1f}s, saved as '{engine_path}' ({human_size(engine_path.stat().st_size)})")
    return record
