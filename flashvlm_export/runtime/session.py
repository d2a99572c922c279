"""Run the selection: the full graph in ONNX Runtime, or its TensorRT engine through EngineRunner."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import FlashVLMError, MissingDependencyError

FEEDS = ("pixel_values", "text_embeds", "text_mask")


@dataclass
class Selection:
    indices: np.ndarray  # (K,) int64 ascending: the kept token indices
    visual_embeds: torch.Tensor  # (K, Dl) fp32: P(X)[indices]
    ms: float  # one warm run of the graph or engine (encoder + projector + selector)
    backend: str


class OrtGraph:
    """The graph in ONNX Runtime: CUDA when onnxruntime-gpu offers it, else CPU."""

    def __init__(self, path: Path, plugin: bool = False):
        import onnxruntime as ort

        available = ort.get_available_providers()
        provider = "CUDAExecutionProvider" if "CUDAExecutionProvider" in available else "CPUExecutionProvider"
        options = None
        if plugin:  # flashvlm::ResidualPrune as an onnxruntime-extensions Python op
            from flashvlm_export.plugin.ort_op import session_options

            options = session_options()
        from flashvlm_export.artifact_paths import check_graph

        check_graph(Path(path))  # the rule, before ONNX Runtime opens it and its external data
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=[provider])
        except Exception as exc:
            first = str(exc).strip().splitlines()[0][:300]
            raise MissingDependencyError(f"ONNX Runtime ({provider}) cannot run {Path(path).name}: {first}") from None
        self.name = f"ONNX Runtime {provider.replace('ExecutionProvider', '')}"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = ["indices", "visual_embeds"]
        return dict(zip(names, self.session.run(names, feeds), strict=True))


class TrtEngine:
    """A TensorRT engine built by flashvlm-export ... --engine (TensorRT and a GPU needed)."""

    def __init__(self, path: Path, plugin_library: Path | None = None):
        from flashvlm_export.trt.runner import EngineRunner

        self.runner = EngineRunner(Path(path), plugin_library=plugin_library)
        self.name = f"TensorRT engine ({self.runner.name})"

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.runner.infer(feeds)


def select(backend, pixel_values: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor, batch: int) -> Selection:
    """One image through the graph; a graph of static batch B > 1 gets the image B times, row 0 is used."""
    feeds = {
        "pixel_values": pixel_values.expand(batch, -1, -1, -1).contiguous().numpy(),
        "text_embeds": text_embeds.expand(batch, -1, -1).contiguous().numpy(),
        "text_mask": text_mask.expand(batch, -1).contiguous().numpy(),
    }
    backend.infer(feeds)  # warm-up: the first run allocates
    start = time.perf_counter()
    out = backend.infer(feeds)
    ms = (time.perf_counter() - start) * 1e3
    indices = np.asarray(out["indices"])[0].astype(np.int64)
    if np.any(np.diff(indices) <= 0):
        raise FlashVLMError(
            f"{backend.name} returned indices that are not strictly ascending; re-export the graph with flashvlm-export"
        )
    embeds = torch.from_numpy(np.asarray(out["visual_embeds"], dtype=np.float32)[0].copy())
    return Selection(indices, embeds, ms, backend.name)
