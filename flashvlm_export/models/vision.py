"""The exported modules: LLaVA's vision features with CLS saliency, the encoder at any precision, the selector
with step 12's gather (and the kept tokens' positions), and the pipeline of the two."""

from __future__ import annotations

import copy

import torch
from torch import nn

from flashvlm_export.errors import UsageError


class VisionFeatures(nn.Module):
    """pixel_values (B, 3, H, W) -> X = hidden_states[layer][:, 1:] (B, N, Dv) and a (B, N).

    a is attentions[layer][:, :, 0, 1:] averaged over heads: the CLS row of the same layer's
    post-softmax attention. Only the layers up to the feature layer run; the rest would be
    discarded by LLaVA anyway. The feature layer's forward is CLIPEncoderLayer's, spelled out so
    that its eager attention weights are kept.
    """

    def __init__(self, vision_tower: nn.Module, feature_layer: int):
        super().__init__()
        layers = vision_tower.encoder.layers
        self.feature_index = len(layers) + feature_layer  # hidden_states[-2] is the output of layer n-2
        if not 0 <= self.feature_index < len(layers):
            raise UsageError(f"vision_feature_layer={feature_layer} out of range for {len(layers)} layers")
        if vision_tower.config._attn_implementation != "eager":
            raise UsageError("the vision tower needs eager attention to return CLS attention weights")
        self.embeddings = vision_tower.embeddings
        self.pre_layrnorm = vision_tower.pre_layrnorm
        self.layers = nn.ModuleList(layers[: self.feature_index + 1])

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, 1 + N, Dv)
        for layer in self.layers[:-1]:
            h = layer(h, None)
        layer = self.layers[-1]
        attn_out, attn_weights = layer.self_attn(layer.layer_norm1(h), None)  # weights (B, heads, 1+N, 1+N)
        h = h + attn_out
        h = h + layer.mlp(layer.layer_norm2(h))
        cls_attention = attn_weights[:, :, 0, 1:].mean(dim=1)  # (B, N)
        return h[:, 1:], cls_attention


class LlavaEncoderCore(nn.Module):
    """LLaVA's pixel_values -> X, a (VisionFeatures), P(X) (the projector on X)."""

    def __init__(self, vision: VisionFeatures, projector: nn.Module):
        super().__init__()
        self.vision = vision
        self.projector = projector

    def forward(self, pixel_values):
        vision_features, cls_attention = self.vision(pixel_values)
        return vision_features, cls_attention, self.projector(vision_features)  # (B, N, Dv), (B, N), (B, N, Dl)


class VisionEncoder(nn.Module):
    """pixel_values -> X, a, P(X), all fp32: the encoder graph of a split export and the front of the pipeline.

    `core` is a family's encoder (pixel_values -> X, a, P(X)). With dtype fp16/bf16 it runs as a copy in that
    dtype behind explicit casts in and out; the selector downstream always sees fp32.
    """

    def __init__(self, core: nn.Module, encoder_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.core = copy.deepcopy(core).to(encoder_dtype) if encoder_dtype != torch.float32 else core
        self.encoder_dtype = encoder_dtype

    def forward(self, pixel_values):
        if self.encoder_dtype == torch.float32:
            return self.core(pixel_values)
        return tuple(t.to(torch.float32) for t in self.core(pixel_values.to(self.encoder_dtype)))


class SelectorWithEmbeds(nn.Module):
    """(X, a, P(X), T, mask) -> (indices, visual_embeds = P(X)[indices], *decision tensors): step 12's output.

    The selector graph of a split export and every --selector-only graph return the K rows
    themselves, so a runtime never copies the N rows of P(X) through the host.
    """

    def __init__(self, selector: nn.Module, token_positions: torch.Tensor | None = None, deepstack: bool = False):
        """`token_positions` (N, 3) int64: each token's (t, h, w) rotary position relative to the image's start;
        given, the module also returns the kept tokens' positions (B, K, 3) after visual_embeds. deepstack=True
        (Qwen3-VL): it takes `deepstack_features` (B, L, N, Dl) after P(X) and returns the kept tokens' rows
        (B, L, K, Dl) after the positions, gathered at the same indices."""
        super().__init__()
        self.selector = selector
        self.token_positions = token_positions
        self.deepstack = deepstack

    def forward(self, vision_features, cls_attention, projected, *rest):
        """rest: [deepstack_features,] text_embeds, text_mask[, budget]. `budget` (B,) int64: given to a budget-range
        selector (selector/range.py), whose -1 padded indices give zero rows and -1 positions, and whose `kept` (B,)
        follows the positions."""
        deepstack, (text_embeds, text_mask, *budget) = (rest[0], rest[1:]) if self.deepstack else (None, rest)
        selected = self.selector(vision_features, cls_attention, projected, text_embeds, text_mask, *budget)
        indices, *decisions = selected if isinstance(selected, tuple) else (selected,)
        kept = (decisions.pop(0),) if getattr(self.selector, "ranged", False) else ()
        valid = indices >= 0
        safe = indices.clamp_min(0) if kept else indices
        # One Gather of K rows per image. torch.gather with an index expanded to (B, K, Dl) exports, with the
        # TorchScript exporter, an Expand whose shape comes from ConstantOfShape: a data-dependent shape.
        rows = torch.stack([p.index_select(0, i) for p, i in zip(projected.unbind(0), safe.unbind(0), strict=True)])
        if kept:
            rows = torch.where(valid[..., None], rows, 0.0)
        if self.token_positions is None:
            return (indices, rows, *kept, *decisions)
        positions = self.token_positions[safe]  # (B, K, 3): a Gather from a constant table
        if kept:
            positions = torch.where(valid[..., None], positions, -1)
        if deepstack is None:
            return (indices, rows, positions, *kept, *decisions)
        # each image's (L, N, Dl) rows at its K indices along N: one Gather per image, as for P(X)
        stacked = torch.stack([d.index_select(1, i) for d, i in zip(deepstack.unbind(0), safe.unbind(0), strict=True)])
        if kept:
            stacked = torch.where(valid[:, None, :, None], stacked, 0.0)
        return (indices, rows, positions, stacked, *kept, *decisions)


class FlashVLMPipeline(nn.Module):
    """(pixel_values, text_embeds, text_mask[, budget]) -> (indices (B, K) int64 ascending, visual_embeds (B, K, Dl)).

    The encoder, then the selector with its gather. With verification=True it also returns the
    selector's decision tensors (s, q, F, G; none when K >= N) and X, a, P(X), the verification
    outputs of export/interface.py, in that order.
    """

    def __init__(self, encoder: VisionEncoder, selector: SelectorWithEmbeds, verification: bool = False):
        super().__init__()
        self.encoder = encoder
        self.selector = selector
        self.verification = verification

    def forward(self, pixel_values, text_embeds, text_mask, *budget):
        features = self.encoder(pixel_values)
        selected = self.selector(*features, text_embeds, text_mask, *budget)  # indices, visual_embeds[, positions][, decisions]
        return (*selected, *features) if self.verification else selected
