"""The one backend interface, and the ONNX Runtime session every ONNX Runtime backend opens.

A backend has a `name` and `infer(feeds) -> {tensor name: array}`, with names from export/interface.py
(Polygraphy's runners share the same shape). The torch reference and static module and the ONNX Runtime
graph of parity/backends.py, the ONNX Runtime graph of runtime/session.py, a TensorRT engine
(trt/runner.py, parity/engine.py) and a split export's chain at one budget (runtime/chain.py) are
backends; parity, run and bench call nothing else. A new model or runtime plugs in here.

A graph runs in ONNX Runtime (a provider: CPU, or CUDA with onnxruntime-gpu) or in OpenVINO Runtime on the
CPU (openvino_runtime.py): `--backend onnxruntime|openvino` on parity, run and bench, `backend=` in Python.
OpenVINO is a pseudo-provider, OPENVINO, so every class that takes a provider takes it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from flashvlm_export.errors import MissingDependencyError, UsageError, arg

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINO"  # not an ONNX Runtime provider: the graph in OpenVINO Runtime on the CPU (openvino_runtime.py)
ONNXRUNTIME_BACKEND, OPENVINO_BACKEND = "onnxruntime", "openvino"
GRAPH_BACKENDS = (ONNXRUNTIME_BACKEND, OPENVINO_BACKEND)  # what --backend / backend= name


@runtime_checkable
class Backend(Protocol):
    name: str  # for reports and logs

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by tensor name for input arrays by tensor name."""
        ...


def backend_provider(backend: str | None) -> str | None:
    """The provider of a --backend choice: OPENVINO, or None (ONNX Runtime's default: CUDA where offered, else CPU)."""
    if backend in (None, ONNXRUNTIME_BACKEND):
        return None
    if backend == OPENVINO_BACKEND:
        from flashvlm_export.openvino_runtime import import_openvino

        import_openvino()  # installed, or one line that says how
        return OPENVINO
    raise UsageError(f"{arg('backend', backend)} is not a graph runtime; choose one of {', '.join(GRAPH_BACKENDS)}")


def ort_provider(requested: str | None = None) -> str:
    """`requested` when ONNX Runtime offers it here (a one-line error otherwise); by default CUDA where offered, else CPU.
    OPENVINO passes through, once OpenVINO is known to be installed."""
    if requested == OPENVINO:
        return backend_provider(OPENVINO_BACKEND)
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        return CUDA if CUDA in available else CPU
    if requested not in available:
        raise UsageError(f"ONNX Runtime provider {requested} is not available here ({', '.join(available)})")
    return requested


def provider_label(provider: str) -> str:
    """CPUExecutionProvider -> CPU."""
    return provider.replace("ExecutionProvider", "")


def runtime_label(provider: str) -> str:
    """What runs the graph, for reports: "ONNX Runtime CPU", "ONNX Runtime CUDA", "OpenVINO CPU"."""
    return "OpenVINO CPU" if provider == OPENVINO else f"ONNX Runtime {provider_label(provider)}"


def ort_session(
    model: Path | str | bytes,
    provider: str,
    *,
    plugin: bool = False,
    threads: int | None = None,
    source: Path | str | None = None,
    cache: Path | bool = True,
    spin: bool = True,
):
    """An ONNX Runtime session of `model` (a path, or a serialized graph: pass `source`, its file) on `provider`,
    or with provider OPENVINO an OpenVinoSession, which answers the same calls (openvino_runtime.py).

    plugin=True registers flashvlm::ResidualPrune as an onnxruntime-extensions Python op (OpenVINO is always given
    the op: plugin/openvino_op.py); `threads` caps the
    intra-op threads (None: ONNX Runtime's default). A graph the provider cannot run (bf16 kernels the CPU
    provider lacks, say) is a one-line MissingDependencyError. `cache`: OpenVINO's model cache folder (True:
    openvino_cache/ beside the graph; False: none); ONNX Runtime keeps none. spin=False: ONNX Runtime's threads sleep
    when a run ends instead of spin-waiting for the next (session.intra_op.allow_spinning = 0): for `eval`, where torch's
    LLM runs between the graphs on the same cores and a spinning pool slowed its next forward by up to 0.15 s here.
    """
    if provider == OPENVINO:
        from flashvlm_export.openvino_runtime import OpenVinoSession

        return OpenVinoSession(model, threads=threads, source=source, cache=cache)
    import onnxruntime as ort

    options = None
    if plugin:
        from flashvlm_export.plugin.ort_op import session_options

        options = session_options()
    if threads is not None:
        options = options or ort.SessionOptions()
        options.intra_op_num_threads = threads
    if not spin:
        options = options or ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    name = Path(str(source if source is not None else model)).name
    if not isinstance(model, bytes):  # artifact_paths' rule before ONNX Runtime opens the graph and its external data
        from flashvlm_export.artifact_paths import check_graph

        model = check_graph(Path(model))
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options, providers=[provider])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MissingDependencyError(f"ONNX Runtime ({provider}) cannot run {name}: {first}") from None
