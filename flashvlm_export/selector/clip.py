"""Selection over a clip (video): G temporal groups of n tokens each, under one of two budget rules.

docs/ALGORITHM.md "Batches and other models", Qwen2.5-VL, Video. Tokens are in the clip's order (group-major, raster
within each group); `a` is per group (the vision tower attends within a group).

- `per-group` (the default): K / G tokens per group, each group selected as an image (its own steps 1-12).
- `joint`: steps 1-12 once over all G * n tokens, with S_int normalised per group first (step 1), so the question
  can spend the budget on the groups it needs.

The Gram a rule decides on, `clip_gram`, is (G * n, n) under per-group (row i: token i against its own group's
tokens) and (G * n, G * n) under joint; `clip_decide` is steps 9, 11 and 12 on it (layer 1 of parity). Reference and
static forms are the selector's own (reference.py, static.py), applied per group or with grouped S_int.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import VIDEO_BUDGETS, SelectorConfig
from flashvlm_export.selector.crops import CropSelector
from flashvlm_export.selector.reference import ReferenceTrace, decide, gram_matrix, scores
from flashvlm_export.selector.schedule import MIN_BUDGET, RoundSchedule, round_schedule
from flashvlm_export.selector.static import TOPK_LIMIT, StaticScores, StaticSelector

RULES = VIDEO_BUDGETS  # --video-budget
DEFAULT_RULE = RULES[0]


@dataclass(frozen=True)
class ClipLayout:
    groups: int  # G = F / temporal_patch_size
    group_tokens: int  # n tokens per group (one image's N)
    rule: str  # one of RULES

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise UsageError(f"--video-budget {self.rule!r} is not a rule; use one of {', '.join(RULES)}")

    @property
    def tokens(self) -> int:
        return self.groups * self.group_tokens

    @property
    def per_group(self) -> bool:
        return self.rule == "per-group"

    @property
    def gram_width(self) -> int:
        """Columns of the Gram the rule decides on: a group's tokens (per-group) or the clip's (joint)."""
        return self.group_tokens if self.per_group else self.tokens

    def group_slices(self):
        n = self.group_tokens
        return [slice(g * n, (g + 1) * n) for g in range(self.groups)]


def check_clip_budget(budget: int, layout: ClipLayout, frames: int) -> None:
    """The rule's budget: per-group, K a multiple of G with K / G >= MIN_BUDGET; joint, N = G * n within TopK."""
    g, n = layout.groups, layout.group_tokens
    if layout.per_group:
        if budget % g:
            low, high = budget // g * g, (budget // g + 1) * g
            near = f"--budget {low} or {high}" if low >= MIN_BUDGET * g else f"--budget {high}"
            raise UsageError(
                f"--budget {budget} does not split evenly over the {g} frame groups of --frames {frames} (per-group "
                f"gives each group K/{g}); use {near}, or --video-budget joint"
            )
        if not MIN_BUDGET <= budget // g <= n:
            raise UsageError(
                f"--budget {budget} gives each of the {g} frame groups {budget // g} tokens; use {MIN_BUDGET * g} <= K <= {g * n}"
            )
    elif layout.tokens > TOPK_LIMIT:
        raise UsageError(
            f"--video-budget joint over --frames {frames} selects among N={layout.tokens} tokens, over TensorRT's TopK "
            f"limit {TOPK_LIMIT}; use --video-budget per-group or at most {TOPK_LIMIT // n * 2} frames"
        )


def clip_schedule(layout: ClipLayout, budget: int, config: SelectorConfig) -> RoundSchedule:
    """The rounds the rule runs: one group's at K / G (per-group, the same for every group) or the clip's at K."""
    if layout.per_group:
        return round_schedule(layout.group_tokens, budget // layout.groups, config)
    return round_schedule(layout.tokens, budget, config)


# ---------------------------------------------------------------- reference


def clip_scores(cls_attention, projected, text, config: SelectorConfig, layout: ClipLayout):
    """Steps 1-8 over a clip: (s, q, F), each (G * n,)."""
    if not layout.per_group:
        return scores(cls_attention, projected, text, config, groups=layout.groups)
    parts = [scores(cls_attention[sl], projected[sl], text, config) for sl in layout.group_slices()]
    return tuple(torch.cat(t) for t in zip(*parts, strict=True))


def clip_gram(vision_features: torch.Tensor, layout: ClipLayout) -> torch.Tensor:
    """Step 10 under the rule: (G * n, n) per-group (each group's own Gram, stacked), (G * n, G * n) joint."""
    if not layout.per_group:
        return gram_matrix(vision_features)
    return torch.cat([gram_matrix(vision_features[sl]) for sl in layout.group_slices()])


def clip_decide(fused: torch.Tensor, gram: torch.Tensor, layout: ClipLayout, schedule: RoundSchedule, trace: bool = False):
    """Steps 9, 11, 12 on a clip's F (G * n,) and clip_gram: indices (K,) ascending over the clip's order."""
    if not layout.per_group:
        return decide(fused, gram, schedule, trace=trace)
    picked = [decide(fused[sl], gram[sl], schedule, trace=True) for sl in layout.group_slices()]
    shift = [sl.start for sl in layout.group_slices()]
    indices, important, residual = (torch.cat([p[i] + s for p, s in zip(picked, shift, strict=True)]) for i in range(3))
    return (indices, important, residual) if trace else indices


def reference_clip_select(
    vision_features: torch.Tensor,  # (G * n, Dv)
    cls_attention: torch.Tensor,  # (G * n,)
    projected_features: torch.Tensor,  # (G * n, Dl)
    text_embeds: torch.Tensor,  # (L, Dl) unmasked text rows
    budget: int,
    config: SelectorConfig,
    layout: ClipLayout,
    trace: bool = False,
):
    """Indices (K,) int64 ascending over the clip; with trace=True also a ReferenceTrace (gram: clip_gram's)."""
    schedule = clip_schedule(layout, budget, config)
    relevance, sharpened, fused = clip_scores(cls_attention, projected_features, text_embeds, config, layout)
    gram = clip_gram(vision_features, layout)
    indices, important, residual = clip_decide(fused, gram, layout, schedule, trace=True)
    return (indices, ReferenceTrace(relevance, sharpened, fused, gram, important, residual)) if trace else indices


# ---------------------------------------------------------------- static


class StaticClipSelector(nn.Module):
    """The static selector over a clip: (X, a, P(X) (B, G*n, .), T, mask) -> indices (B, K) ascending over the clip.

    per-group: one StaticSelector at (n, K/G) over the B * G groups as a batch; joint: one at (G*n, K) whose step 1
    normalises S_int per group. With verification=True also s, q, F (B, G*n) and the rule's Gram (clip_gram's layout).
    """

    def __init__(
        self,
        layout: ClipLayout,
        budget: int,
        config: SelectorConfig = SelectorConfig(),
        prune: nn.Module | None = None,
        verification: bool = False,
        schedule: RoundSchedule | None = None,
    ):
        super().__init__()
        self.layout = layout
        schedule = schedule if schedule is not None else clip_schedule(layout, budget, config)
        n, k = (layout.group_tokens, budget // layout.groups) if layout.per_group else (layout.tokens, budget)
        self.inner = StaticSelector(n, k, config, prune=prune, verification=verification, schedule=schedule)
        if not layout.per_group:
            self.inner.scores = StaticScores(n, config, groups=layout.groups)
        self.schedule = self.inner.schedule
        self.verification = self.inner.verification

    def forward(self, vision_features, cls_attention, projected_features, text_embeds, text_mask):
        if not self.layout.per_group:
            return self.inner(vision_features, cls_attention, projected_features, text_embeds, text_mask)
        b, g, n = vision_features.shape[0], self.layout.groups, self.layout.group_tokens
        if self.schedule.keeps_all:  # as StaticSelector's, at the graph's own batch (a static shape)
            return torch.arange(g * n, dtype=torch.int64).expand(b, g * n)
        # each group selected as an image, the clip's text for every group: a LLaVA-NeXT photo's crops, the same module
        selected = CropSelector(self.inner, g)(vision_features, cls_attention, projected_features, text_embeds, text_mask)
        if not isinstance(selected, tuple):
            return selected
        indices, s, q, fused, gram = selected
        return indices, s, q, fused, gram.reshape(b, g * n, n)  # clip_gram's layout: each token against its own group
