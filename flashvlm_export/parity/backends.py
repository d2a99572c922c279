"""Parity's backends (backend.py's interface): each turns a case's feeds into outputs, indices (B, K) and, for
layers 1 and 2, the verification tensors (q, F, G; for a pipeline also X, a, P(X)), named as in export/interface.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from flashvlm_export.backend import CPU, OPENVINO, ort_provider, ort_session, provider_label
from flashvlm_export.export.interface import (
    BUDGET,
    CLS_ATTENTION,
    DEEPSTACK_FEATURES,
    FUSED_SCORES,
    GRAM,
    INDICES,
    KEPT,
    PIXEL_VALUES,
    PROJECTED_FEATURES,
    SELECTOR_INPUTS,
    SHARPENED_SCORES,
    TEXT_EMBEDS,
    TEXT_MASK,
    TEXT_RELEVANCE,
    VISION_FEATURES,
    GraphInterface,
)
from flashvlm_export.parity.compare import SHIPPED_INDICES, padded
from flashvlm_export.selector.clip import ClipLayout, reference_clip_select
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import reference_select


def _tensors(feeds: dict[str, np.ndarray], names) -> list[torch.Tensor]:
    return [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names]


class SelectorReference:
    """The gold standard on selector feeds: indices, and s, q, F, G per image (s and q are NaN without text).

    Feeds with a `budget` (B,) (a budget-range graph's): each image at its own budget, indices padded with -1 to
    `budget` (the range's KMAX), and `kept` (B,).
    """

    name = "reference"

    def __init__(self, budget: int, config: SelectorConfig, verification: bool = True, clip: ClipLayout | None = None):
        self.budget = budget
        self.config = config
        self.verification = verification  # q, F, G for the parity layers; benchmarks turn it off
        self.clip = clip  # a clip graph's temporal groups and budget rule (selector/clip.py)

    def select(self, x, a, p, text, k, trace=False):
        if self.clip is not None:
            return reference_clip_select(x, a, p, text, k, self.config, self.clip, trace=trace)
        return reference_select(x, a, p, text, k, self.config, trace=trace)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, a, p, t, mask = _tensors(feeds, SELECTOR_INPUTS)
        budgets = feeds.get(BUDGET)
        rows, relevance, sharpened, fused, grams = [], [], [], [], []
        for b in range(x.shape[0]):
            text = t[b][mask[b].bool()]
            k = self.budget if budgets is None else int(budgets[b])
            if not self.verification:
                rows.append(self.select(x[b], a[b], p[b], text, k).numpy())
                continue
            indices, trace = self.select(x[b], a[b], p[b], text, k, trace=True)
            rows.append(indices.numpy())
            fused.append(trace.fused_scores.numpy())
            grams.append(trace.gram.numpy())
            relevance.append(trace.relevance.numpy())
            sharpened.append(trace.sharpened.numpy())
        if budgets is None:
            out = {INDICES: np.stack(rows)}
        else:
            out = {INDICES: np.stack([padded(r, self.budget) for r in rows]), KEPT: np.asarray([len(r) for r in rows])}
        if self.verification:
            out.update({TEXT_RELEVANCE: np.stack(relevance), SHARPENED_SCORES: np.stack(sharpened)})
            out.update({FUSED_SCORES: np.stack(fused), GRAM: np.stack(grams)})
        return out


class PipelineFeatures:
    """pixels -> X, a, P(X) from the model's own transformers modules in fp32 (the family's reference_features, or
    reference_clip_features for a clip's (B, F, 3, H, W); a photo's crops are 5-D too, and are not a clip)."""

    def __init__(self, parts, clip: bool = False):
        self.parts = parts
        self.clip = clip

    @torch.no_grad()
    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = torch.from_numpy(feeds[PIXEL_VALUES])
        x, a, p, *deepstack = self.parts.reference_clip_features(pixels) if self.clip else self.parts.reference_features(pixels)
        out = {VISION_FEATURES: x.numpy(), CLS_ATTENTION: a.numpy(), PROJECTED_FEATURES: p.numpy()}
        if deepstack:  # Qwen3-VL: (B, L, N, Dl)
            out[DEEPSTACK_FEATURES] = deepstack[0].numpy()
        return out


class PipelineReference(SelectorReference):
    """The reference pipeline: fp32 torch encoder, then the reference selector on its features."""

    def __init__(self, parts, budget: int, config: SelectorConfig, clip: ClipLayout | None = None):
        super().__init__(budget, config, clip=clip)
        self.features = PipelineFeatures(parts, clip=clip is not None)

    def infer(self, feeds):
        features = self.features(feeds)
        selector_feeds = {**features, TEXT_EMBEDS: feeds[TEXT_EMBEDS], TEXT_MASK: feeds[TEXT_MASK]}
        if BUDGET in feeds:
            selector_feeds[BUDGET] = feeds[BUDGET]
        return {**features, **super().infer(selector_feeds)}


class TorchModule:
    """A static torch module (selector or pipeline) built with its verification outputs, run eagerly."""

    name = "static-torch"

    def __init__(self, module: torch.nn.Module, interface: GraphInterface):
        self.module = module.eval()
        self.interface = interface

    @torch.no_grad()
    def infer(self, feeds) -> dict[str, np.ndarray]:
        out = self.module(*_tensors(feeds, self.interface.input_names))
        out = out if isinstance(out, tuple) else (out,)
        names = self.interface.output_names + self.interface.verification_names
        return {name: value.numpy() for name, value in zip(names, out, strict=False)}


class OnnxRuntime:
    """A shipped graph and its verification build in ONNX Runtime (CPU unless another provider is asked for), or in
    OpenVINO Runtime with provider OPENVINO (backend.py)."""

    def __init__(
        self,
        path: Path,
        interface: GraphInterface | None = None,
        provider: str = CPU,
        plugin: bool = False,
        scratch: Path | None = None,
    ):
        provider = ort_provider(provider)
        self.session = ort_session(Path(path), provider, plugin=plugin)
        self.verification = None
        if interface is not None and interface.verification:
            from flashvlm_export.export.verification import verification_model

            model = verification_model(Path(path), interface, scratch or Path(path).parent)
            # a throwaway build in scratch: no OpenVINO model cache (it would hold a copy of the weights)
            self.verification = ort_session(model, provider, plugin=plugin, source=path, cache=False)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        runtime = "openvino[CPU" if provider == OPENVINO else f"onnxruntime[{provider_label(provider)}"
        self.name = f"{runtime}{', plugin op' if plugin else ''}]"

    def indices(self, feeds) -> np.ndarray:
        """The shipped graph's indices alone."""
        return self.session.run([INDICES], {name: feeds[name] for name in self.input_names})[0]

    def infer(self, feeds) -> dict[str, np.ndarray]:
        inputs = {name: feeds[name] for name in self.input_names}
        if self.verification is None:
            return {INDICES: self.session.run([INDICES], inputs)[0]}
        names = [o.name for o in self.verification.get_outputs()]
        out = dict(zip(names, self.verification.run(names, inputs), strict=True))
        out[SHIPPED_INDICES] = self.session.run([INDICES], inputs)[0]
        return out
