"""The one backend interface, and the ONNX Runtime session every ONNX Runtime backend opens.

A backend has a `name` and `infer(feeds) -> {tensor name: array}`, with names from export/interface.py
(Polygraphy's runners share the same shape). The torch reference and static module and the ONNX Runtime
graph of parity/backends.py, the ONNX Runtime graph of runtime/session.py, a TensorRT engine
(trt/runner.py, parity/engine.py) and a split export's chain at one budget (runtime/chain.py) are
backends; parity, run and bench call nothing else. A new model or runtime plugs in here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from flashvlm_export.errors import MissingDependencyError, UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


@runtime_checkable
class Backend(Protocol):
    name: str  # for reports and logs

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by tensor name for input arrays by tensor name."""
        ...


def ort_provider(requested: str | None = None) -> str:
    """`requested` when ONNX Runtime offers it here (a one-line error otherwise); by default CUDA where offered, else CPU."""
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


def ort_session(
    model: Path | str | bytes,
    provider: str,
    *,
    plugin: bool = False,
    threads: int | None = None,
    source: Path | str | None = None,
):
    """An ONNX Runtime session of `model` (a path, or a serialized graph: pass `source`, its file) on `provider`.

    plugin=True registers flashvlm::ResidualPrune as an onnxruntime-extensions Python op; `threads` caps the
    intra-op threads (None: ONNX Runtime's default). A graph the provider cannot run (bf16 kernels the CPU
    provider lacks, say) is a one-line MissingDependencyError.
    """
    import onnxruntime as ort

    options = None
    if plugin:
        from flashvlm_export.plugin.ort_op import session_options

        options = session_options()
    if threads is not None:
        options = options or ort.SessionOptions()
        options.intra_op_num_threads = threads
    name = Path(str(source if source is not None else model)).name
    if not isinstance(model, bytes):  # artifact_paths' rule before ONNX Runtime opens the graph and its external data
        from flashvlm_export.artifact_paths import check_graph

        model = check_graph(Path(model))
    try:
        return ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=options, providers=[provider])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise MissingDependencyError(f"ONNX Runtime ({provider}) cannot run {name}: {first}") from None
