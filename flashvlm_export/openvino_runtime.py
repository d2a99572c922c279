"""A graph in OpenVINO Runtime on the CPU, behind the session interface backend.py's callers use.

`OpenVinoSession` answers `get_inputs()`, `get_outputs()` and `run(names, feeds)` as an ONNX Runtime
InferenceSession does, so the parity backends, run's graph and a split's chain take it unchanged.
OpenVINO reads our ONNX graphs as they are (its ONNX frontend); nothing is converted ahead of time.

- Precision: f32, pinned. OpenVINO's CPU plugin picks bf16 by default on CPUs with native bf16
  (INFERENCE_PRECISION_HINT, OpenVINO's docs; ../shared/NOTES.md), which parity would misread as a bug.
- Model cache: OpenVINO's own CACHE_DIR, `openvino_cache/` beside the graph. A second start reads the graph
  and imports the compiled blob instead of compiling it. The model is compiled from the graph as read, so
  OpenVINO keys each blob by the model's content and the settings, and a replaced graph compiles anew. A
  folder that cannot be written: no cache.
- Custom ops: a plugin graph's flashvlm::ResidualPrune (and ResidualPruneRange) is a TensorRT plugin and an ONNX
  Runtime custom op (plugin/ort_op.py); OpenVINO is given the same op (plugin/openvino_op.py: a Python op running
  the same reference loop). Any other custom op is refused in one line naming it.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flashvlm_export.artifacts.naming import OPENVINO_CACHE as CACHE_DIRNAME
from flashvlm_export.artifacts.naming import OPENVINO_CACHE_MARK as CACHE_MARK
from flashvlm_export.errors import MissingDependencyError, UsageError

DEVICE = "CPU"
PRECISION = {"INFERENCE_PRECISION_HINT": "f32"}  # never OpenVINO's bf16 default where parity is claimed
STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
INSTALL = "pip install 'flashvlm-export[openvino]' (or: pip install openvino)"


def import_openvino():
    """The openvino module, or a one-line MissingDependencyError that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"--backend openvino needs OpenVINO Runtime, which is not installed: {INSTALL}") from None
    return openvino


def unconverted_custom_ops(reason: str) -> list[str]:
    """The `domain::op` of each op outside ONNX's own domains that OpenVINO's ONNX frontend reports it could not convert
    ("No conversion rule found for operations: flashvlm.ResidualPrune, ...")."""
    found = re.search(r"No conversion rule found for operations: (.*)", reason)
    ops = [op.strip() for op in found.group(1).split(",")] if found else []
    return [op.replace(".", "::", 1) for op in ops if "." in op and op.split(".", 1)[0] not in STANDARD_DOMAINS]


def _dims(port) -> list[int | None]:
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]


def refuse_custom_ops(ops: list[str], name: str) -> None:
    if ops:
        raise UsageError(
            f"OpenVINO cannot run {name}: it holds the custom op {', '.join(ops)}, which neither OpenVINO nor this tool "
            "implements for it; export the graph with flashvlm-export (its plugin ops run here), or use --backend onnxruntime "
            "with the op's library"
        )


def _reason(exc: Exception) -> str:
    """OpenVINO's message is a stack of 'Exception from file:line' lines; the last other line says what happened."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    told = [line for line in lines if not line.startswith(("Exception from ", "Check '"))]
    return (told or lines or [type(exc).__name__])[-1][:300]


def cache_dir(graph: Path) -> Path | None:
    """`openvino_cache/` beside the graph, made if need be (with this tool's mark, so that --force may replace it with
    the graphs, artifacts/ownership.py); None where the folder cannot be written."""
    import json

    from flashvlm_export.artifacts.ownership import PRODUCER

    folder = graph.parent / CACHE_DIRNAME
    try:
        folder.mkdir()
        mark = {"producer": PRODUCER, "what": "OpenVINO's model cache (CACHE_DIR) of the graphs beside it; safe to delete"}
        (folder / CACHE_MARK).write_text(json.dumps(mark) + "\n")
    except FileExistsError:
        pass
    except OSError:
        return None
    return folder if folder.is_dir() and not folder.is_symlink() and os.access(folder, os.W_OK) else None


@dataclass(frozen=True)
class _Port:
    name: str
    shape: list[int]


class OpenVinoSession:
    """One compiled graph and one infer request (OpenVINO's CPU plugin, f32).

    `model`: a graph's path, or a serialized graph (pass `source`, its file, for messages). `cache`: where
    the compiled model is cached (default: openvino_cache/ beside a path's graph; False: none).
    `start_s` is the seconds from reading the graph to a compiled model ready to run (`read_s` of them reading it).
    """

    def __init__(
        self,
        model: Path | str | bytes,
        *,
        threads: int | None = None,
        source: Path | str | None = None,
        cache: Path | bool = True,
    ):
        ov = import_openvino()
        name = Path(str(source if source is not None else model)).name if not isinstance(model, bytes) or source else "graph"
        config = dict(PRECISION)
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.cache = None
        if not isinstance(model, bytes):
            from flashvlm_export.artifact_paths import check_graph

            model = check_graph(Path(model))
            self.cache = cache_dir(model) if cache is True else (Path(cache) if cache else None)
        if self.cache is not None:
            config["CACHE_DIR"] = str(self.cache)
        core = ov.Core()
        from flashvlm_export.plugin.openvino_op import extensions

        for extension in extensions():  # a plugin graph's node: OpenVINO is given this tool's op
            core.add_extension(extension)
        start = time.perf_counter()
        try:
            # read, then compile the model object: OpenVINO keys the cache by the model's content then. Compiled from a
            # path, it keys by the path and would serve a replaced graph's stale blob (tests/test_openvino.py plants one)
            graph = core.read_model(str(model) if not isinstance(model, bytes) else model)
            self.read_s = time.perf_counter() - start
            self.compiled = core.compile_model(graph, DEVICE, config)
        except Exception as exc:
            reason = _reason(exc)
            refuse_custom_ops(unconverted_custom_ops(reason), name)  # a custom op of another tool
            raise MissingDependencyError(f"OpenVINO ({DEVICE}) cannot run {name}: {reason}") from None
        self.start_s = time.perf_counter() - start
        self.request = self.compiled.create_infer_request()
        self._inputs = [_Port(p.get_any_name(), _dims(p)) for p in self.compiled.inputs]
        self._outputs = [_Port(p.get_any_name(), _dims(p)) for p in self.compiled.outputs]
        self._lock = threading.Lock()  # one infer request: one call at a time, as an ONNX Runtime session allows many

    def get_inputs(self) -> list[_Port]:
        return list(self._inputs)

    def get_outputs(self) -> list[_Port]:
        return list(self._outputs)

    def run(self, names: list[str] | None, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """`names`' arrays (None: every output), as ONNX Runtime's run; the arrays are the caller's own copies."""
        with self._lock:
            results = self.request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()}, share_outputs=True)
            wanted = names or [p.name for p in self._outputs]
            return [np.array(results[self.compiled.output(name)], copy=True) for name in wanted]
