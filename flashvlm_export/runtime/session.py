"""Run the selection on any backend (backend.py): the full graph in ONNX Runtime, its TensorRT engine
(trt/runner.py's EngineRunner), or a split export's chain at one budget (runtime/chain.py)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.backend import Backend, ort_provider, ort_session, runtime_label
from flashvlm_export.errors import FlashVLMError
from flashvlm_export.export.interface import (
    BUDGET,
    DEEPSTACK_EMBEDS,
    INDICES,
    KEPT,
    PIXEL_VALUES,
    POSITIONS,
    TEXT_EMBEDS,
    TEXT_MASK,
    VISUAL_EMBEDS,
)


@dataclass
class Selection:
    indices: np.ndarray  # (K,) int64 ascending: the kept token indices
    visual_embeds: torch.Tensor  # (K, Dl) fp32: P(X)[indices]
    ms: float  # one warm run of the graph or engine (encoder + projector + selector)
    backend: str
    positions: torch.Tensor | None = None  # (K, 3) int64 (t, h, w) from the image's start, where the graph returns them
    deepstack: torch.Tensor | None = None  # (L, K, Dl) fp32: the kept tokens' DeepStack rows (Qwen3-VL)


class OrtGraph:
    """A shipped graph in ONNX Runtime, its indices and visual_embeds (and positions, where it returns them): CUDA when
    onnxruntime-gpu offers it, else CPU; or in OpenVINO with provider OPENVINO (backend.py)."""

    def __init__(self, path: Path, plugin: bool = False, provider: str | None = None, spin: bool = True):
        provider = ort_provider(provider)
        self.session = ort_session(Path(path), provider, plugin=plugin, spin=spin)
        self.name = runtime_label(provider)
        # a graph that keeps every token may have no text inputs (TorchScript drops unused ones), as parity feeds it
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        returned = {o.name for o in self.session.get_outputs()}
        # positions where the model has them; kept for a budget-range graph (whose feeds carry `budget`)
        self.output_names = [INDICES, VISUAL_EMBEDS] + [name for name in (POSITIONS, DEEPSTACK_EMBEDS, KEPT) if name in returned]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = {name: feeds[name] for name in self.input_names}
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs), strict=True))


def selection_feeds(pixel_values: torch.Tensor, text_embeds: torch.Tensor, text_mask: torch.Tensor, batch: int) -> dict:
    """The graph's inputs for one image (a clip, or crops), repeated to its static batch B."""
    return {
        PIXEL_VALUES: pixel_values.expand(batch, *pixel_values.shape[1:]).contiguous().numpy(),
        TEXT_EMBEDS: text_embeds.expand(batch, -1, -1).contiguous().numpy(),
        TEXT_MASK: text_mask.expand(batch, -1).contiguous().numpy(),
    }


def select(
    backend: Backend,
    pixel_values: torch.Tensor,
    text_embeds: torch.Tensor,
    text_mask: torch.Tensor,
    batch: int,
    budget: np.ndarray | None = None,
) -> Selection:
    """One image through the graph; a graph of static batch B > 1 gets the image B times, row 0 is used.

    `budget` (B,) int64: a budget-range graph's input (runtime/budgets.py checked it); its padded outputs are cut at
    the image's `kept`.
    """
    feeds = selection_feeds(pixel_values, text_embeds, text_mask, batch)
    if budget is not None:
        feeds[BUDGET] = budget
    backend.infer(feeds)  # warm-up: the first run allocates
    start = time.perf_counter()
    out = backend.infer(feeds)
    ms = (time.perf_counter() - start) * 1e3
    return read_selection(out, backend.name, ms)


def read_selection(out: dict[str, np.ndarray], name: str, ms: float) -> Selection:
    """Image 0 of a backend's outputs, checked: a budget-range graph's padded rows cut at `kept`, indices strictly
    ascending, positions (K, 3) and DeepStack rows (L, K, Dl) where the graph returns them; one line otherwise."""
    indices = np.asarray(out[INDICES])[0].astype(np.int64)
    kept = int(np.asarray(out[KEPT])[0]) if KEPT in out else len(indices)
    if not 0 < kept <= len(indices) or np.any(indices[kept:] != -1):
        raise FlashVLMError(f"{name} returned kept={kept} with indices {indices[:8].tolist()}...; re-export the graph")
    indices = indices[:kept]
    if np.any(np.diff(indices) <= 0):
        raise FlashVLMError(f"{name} returned indices that are not strictly ascending; re-export the graph with flashvlm-export")
    embeds = torch.from_numpy(np.asarray(out[VISUAL_EMBEDS], dtype=np.float32)[0][:kept].copy())
    positions = None
    if POSITIONS in out:
        positions = torch.from_numpy(np.asarray(out[POSITIONS])[0][:kept].astype(np.int64))
        if tuple(positions.shape) != (len(indices), 3):
            raise FlashVLMError(
                f"{name} returned positions of shape {tuple(positions.shape)}, not ({len(indices)}, 3); "
                "re-export the graph with flashvlm-export"
            )
    deepstack = None
    if DEEPSTACK_EMBEDS in out:
        deepstack = torch.from_numpy(np.asarray(out[DEEPSTACK_EMBEDS], dtype=np.float32)[0][:, :kept].copy())
        if tuple(deepstack.shape[1:]) != tuple(embeds.shape):
            raise FlashVLMError(
                f"{name} returned deepstack_embeds of shape {tuple(deepstack.shape)}, not (L, {len(indices)}, "
                f"{embeds.shape[1]}); re-export the graph with flashvlm-export"
            )
    return Selection(indices, embeds, ms, name, positions, deepstack)
