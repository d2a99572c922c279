"""A TensorRT engine as a parity backend: the shipped engine and a verification engine built from the
verification build of its graph, with the same precision and plugin (ALGORITHM.md "Parity")."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from flashvlm_export.artifacts.sidecar import read_sidecar
from flashvlm_export.errors import UsageError
from flashvlm_export.export.graphs import request_from_metadata
from flashvlm_export.export.interface import INDICES
from flashvlm_export.export.verification import add_verification_outputs
from flashvlm_export.parity.compare import SHIPPED_INDICES


class EngineBackend:
    """Runs the shipped engine for its indices and the verification engine for q, F, G (and X, a, P(X))."""

    def __init__(self, shipped, verification, graph_path: str, graph_metadata: dict[str, str]):
        self.shipped, self.verification = shipped, verification
        self.graph_path, self.graph_metadata = graph_path, graph_metadata
        self.name = shipped.name
        self.precision = shipped.precision

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.verification.infer(feeds)
        out[SHIPPED_INDICES] = self.shipped.infer(feeds)[INDICES]
        return out


def engine_graph(engine: Path, record: dict, graph: Path | None) -> Path:
    """The graph `engine` was built from: the user's --graph, or the one its sidecar names by the rule of
    artifact_paths; either way with the sha256 the sidecar records.

    The sidecar names the graph relative to the engine's folder. A split's engines live in its `engines/`
    subfolder and name their graphs in the split folder (`../selector_b64.onnx`): that folder, the one
    holding the manifest, is the artifact, so the name is resolved there. Any other name leading out of
    the engine's folder (`../graphs/x.onnx` beside a default `engines/`) is not followed: pass --graph.
    """
    import os

    from flashvlm_export.artifact_paths import named_file
    from flashvlm_export.artifacts.files import sha256_of
    from flashvlm_export.artifacts.sidecar import sidecar_path
    from flashvlm_export.export.manifest import MANIFEST_NAME
    from flashvlm_export.export.split import ENGINES_FOLDER

    if graph is None:
        folder, name = engine.parent, str(record["onnx"])
        split = engine.parent.parent
        if engine.parent.name == ENGINES_FOLDER and (split / MANIFEST_NAME).is_file():
            folder, name = split, os.path.normpath(os.path.join(ENGINES_FOLDER, name))
        shown = os.path.normpath(os.path.join(engine.parent, str(record["onnx"])))
        fix = f"pass the graph it was built from with --graph (e.g. --graph {shown}; its sha256 is checked)"
        graph = named_file(sidecar_path(engine), folder, name, "graph", "graph", fix=fix)
    expected = record.get("onnx_sha256")
    if expected is not None and sha256_of(graph) != expected:
        raise UsageError(f"{graph} is not the graph {engine} was built from (sha256 differs); pass that graph with --graph")
    return graph


def engine_backend(engine: Path, plugin_library: Path | None, log=print, graph: Path | None = None) -> EngineBackend:
    """Load `engine` (checked against its sidecar) and build its verification engine in a temp folder."""
    from flashvlm_export.artifact_paths import load_graph
    from flashvlm_export.trt.build import build_engine
    from flashvlm_export.trt.runner import EngineRunner

    shipped = EngineRunner(engine, plugin_library=plugin_library)
    record = read_sidecar(engine)
    graph = engine_graph(engine, record, graph)
    meta = record["onnx_metadata"]
    request = request_from_metadata(meta, str(graph))
    scratch = Path(tempfile.mkdtemp(prefix="flashvlm-verify-engine-"))
    model = add_verification_outputs(load_graph(graph, external_data=True), request.interface(), str(graph))
    verify_graph = scratch / f"{graph.stem}.verify.onnx"
    onnx.save(model, str(verify_graph), save_as_external_data=model.ByteSize() > 2**31 - 1)
    log(f"Parity: building the verification engine of {engine.name} (same precision and plugin, F and G exposed)")
    verify_engine = scratch / f"{engine.stem}.verify.plan"
    lib = None
    if record.get("plugin"):
        from flashvlm_export.plugin.build import find_plugin_library

        lib = find_plugin_library(str(plugin_library) if plugin_library else None)
    build_engine(verify_graph, verify_engine, meta, record["precision"], lib, None, log=log)
    verification = EngineRunner(verify_engine, plugin_library=plugin_library)
    return EngineBackend(shipped, verification, str(graph), meta)
