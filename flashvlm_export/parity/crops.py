"""Parity of a model cut into crops (LLaVA-NeXT), crop by crop: each crop is an image of its own to the selector.

The graphs take a photo's crops together and return its K indices over the crops' crop-major order. Parity's three
layers (parity/compare.py) are stated per image of the selector, so `CropView` turns a photo's tensors into its
crops' (B x crops images at K / crops each) before they are compared: X, a, P(X), s, q, F cut per crop, G per crop
already, the text repeated for each crop, and the indices and visual_embeds split into K / crops per crop with the
crop's offset taken off. A graph that puts a token in the wrong crop (two crops swapped, one crop's budget off by one)
then hands some crop indices outside 0..n-1 or not its own, which layer 1 reports; every line names the photo and
crop (BackendReport.crops).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from flashvlm_export.export.interface import (
    CLS_ATTENTION,
    FUSED_SCORES,
    GRAM,
    INDICES,
    PIXEL_VALUES,
    PROJECTED_FEATURES,
    SHARPENED_SCORES,
    TEXT_EMBEDS,
    TEXT_MASK,
    TEXT_RELEVANCE,
    VISION_FEATURES,
    VISUAL_EMBEDS,
)
from flashvlm_export.parity.compare import SHIPPED_INDICES

PER_TOKEN = (VISION_FEATURES, CLS_ATTENTION, PROJECTED_FEATURES, TEXT_RELEVANCE, SHARPENED_SCORES, FUSED_SCORES)
PER_KEPT = (INDICES, SHIPPED_INDICES, VISUAL_EMBEDS)
PER_PHOTO = (TEXT_EMBEDS, TEXT_MASK)


@dataclass(frozen=True)
class CropView:
    crops: int  # 1: the identity
    crop_tokens: int  # n, tokens per crop

    @classmethod
    def of(cls, request) -> CropView:
        return cls(request.crops, request.tokens // request.crops)

    def __call__(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A photo's tensors (B, ...) as its crops' (B x crops, ...); names it does not know pass through unchanged."""
        c = self.crops
        if c == 1:
            return tensors
        out = {}
        for name, value in tensors.items():
            value = np.asarray(value)
            b = value.shape[0]
            if name in PER_TOKEN:
                out[name] = value.reshape(b * c, value.shape[1] // c, *value.shape[2:])
            elif name == GRAM:
                out[name] = value.reshape(b * c, *value.shape[2:])
            elif name == PIXEL_VALUES:
                out[name] = value.reshape(b * c, *value.shape[2:])
            elif name in PER_PHOTO:
                out[name] = np.repeat(value, c, axis=0)
            elif name in PER_KEPT:
                k = value.shape[1] // c
                kept = value.reshape(b * c, k, *value.shape[2:])
                if name != VISUAL_EMBEDS:
                    offsets = np.tile(np.arange(c, dtype=kept.dtype) * self.crop_tokens, b)[:, None]
                    kept = kept - offsets
                out[name] = kept
            else:
                out[name] = value
        return out


class CropReference:
    """The reference on a photo's crops: features (the torch encoder's, for a pipeline) cut per crop, then the selector
    reference at K / crops on each crop; returns the crops' view (what CropView makes of a backend's outputs)."""

    def __init__(self, selector_reference, view: CropView, features=None):
        self.selector_reference = selector_reference  # a SelectorReference at K / crops
        self.view = view
        self.features = features  # parity/backends.py PipelineFeatures, for a full graph; None: selector feeds
        self.name = "reference"

    @torch.no_grad()
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = self.features(feeds) if self.features is not None else {n: feeds[n] for n in PER_TOKEN if n in feeds}
        crops = self.view({**features, TEXT_EMBEDS: feeds[TEXT_EMBEDS], TEXT_MASK: feeds[TEXT_MASK]})
        return {**self.view(features), **self.selector_reference.infer(crops)}
