"""The selector of a photo cut into crops (LLaVA-NeXT): each crop selected as an image of its own, K / crops each.

docs/ALGORITHM.md "Batches and other models", LLaVA-NeXT: the budget is split evenly across the crops (640 = 5 x 128,
the authors' LLaVA-1.6 code and VisPruner's protocol). The crops of B photos are B x crops images of one selector
(selector/static.py, batched), so every step and every tie rule is LLaVA-1.5's. Inputs and outputs are the photo's:
X, a, P(X) crop-major (B, crops x n, .), the text once per photo; indices (B, K) over that crop-major order
(crop c's token i is c x n + i), ascending. Verification: s, q, F (B, crops x n) and G per crop (B, crops, n, n).
"""

from __future__ import annotations

import torch
from torch import nn


class CropSelector(nn.Module):
    def __init__(self, selector: nn.Module, crops: int):
        """`selector`: one crop's (n tokens, K / crops), e.g. a StaticSelector."""
        super().__init__()
        self.selector = selector
        self.crops = crops
        self.schedule = selector.schedule  # one crop's rounds
        self.verification = selector.verification

    def forward(self, vision_features, cls_attention, projected_features, text_embeds, text_mask):
        b, c = vision_features.shape[0], self.crops
        n = vision_features.shape[1] // c

        def per_crop(t: torch.Tensor) -> torch.Tensor:  # (B, crops x n, ...) -> (B x crops, n, ...)
            return t.reshape(b * c, n, *t.shape[2:])

        def per_photo_text(t: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B x crops, T, ...): each crop the photo's text
            # a Concat: TorchScript exports an expand with a data-dependent shape
            return torch.cat([t[:, None]] * c, dim=1).reshape(b * c, *t.shape[1:])

        out = self.selector(
            per_crop(vision_features),
            per_crop(cls_attention),
            per_crop(projected_features),
            per_photo_text(text_embeds),
            per_photo_text(text_mask),
        )
        indices, *decisions = out if isinstance(out, tuple) else (out,)
        k = indices.shape[1]
        offsets = (torch.arange(c, dtype=torch.int64) * n).reshape(1, c, 1)
        indices = (indices.reshape(b, c, k) + offsets).reshape(b, c * k)  # crop-major, ascending
        if not decisions:
            return indices
        relevance, sharpened, fused, gram = decisions
        return (
            indices,
            relevance.reshape(b, c * n),
            sharpened.reshape(b, c * n),
            fused.reshape(b, c * n),
            gram.reshape(b, c, n, n),
        )
