"""The reference selector: eager PyTorch, a dynamic loop, read side by side with docs/ALGORITHM.md.

It is the gold standard of every parity check. One image at a time; `reference_select_batch`
loops over a batch and drops masked text rows before scoring, so padding cannot matter.

`decide` is steps 9, 11 and 12 alone: given any backend's own fused scores F and Gram G it gives
the indices that backend must return. Comparisons and max of identical floats are the same on
every machine, so this is exact (ALGORITHM.md "Parity", layer 1: decision parity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.ops import LOG_FLOOR, MINMAX_EPS, l2norm, minmax
from flashvlm_export.selector.schedule import RoundSchedule, round_schedule


@dataclass
class ReferenceTrace:
    """What the reference computed on the way: the inputs of its decisions and the decisions."""

    relevance: torch.Tensor  # (N,) s, step 5 (NaN without text: unused)
    sharpened: torch.Tensor  # (N,) q, step 6 (NaN without text: unused)
    fused_scores: torch.Tensor  # (N,) F, step 8
    gram: torch.Tensor  # (N, N) G, step 10
    important: torch.Tensor  # (K_imp,) I, step 9
    residual: torch.Tensor  # (K_div,) R after the last round, step 11


def gram_matrix(vision_features: torch.Tensor) -> torch.Tensor:
    """Step 10: G = Z Z^T with Z = l2norm(X); (..., N, Dv) -> (..., N, N)."""
    z = l2norm(vision_features)
    return z @ z.transpose(-1, -2)


def intrinsic_scores(cls_attention: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Step 1: S_int = (a - min a) / (max a - min a + 1e-6), (N,); with `groups` > 1 (a clip's temporal groups under
    the joint rule, selector/clip.py) min and max are each group's own."""
    if groups > 1:
        return intrinsic_scores_grouped(cls_attention, groups)
    a = cls_attention
    return (a - a.min()) / (a.max() - a.min() + MINMAX_EPS)


def intrinsic_scores_grouped(cls_attention: torch.Tensor, groups: int) -> torch.Tensor:
    a = cls_attention.reshape(groups, -1)
    low, high = a.amin(dim=1, keepdim=True), a.amax(dim=1, keepdim=True)
    return ((a - low) / (high - low + MINMAX_EPS)).reshape(-1)


def text_relevance(
    projected_features: torch.Tensor,  # (N, Dl) P(X)
    text_embeds: torch.Tensor,  # (L, Dl) T, unmasked rows only, L >= 1
    config: SelectorConfig,
) -> torch.Tensor:
    """Steps 2-5: s, each patch's similarity to the gated text, softmax-aggregated over the text, (N,)."""
    v = l2norm(projected_features)  # 2  (N, Dl)
    t_hat = l2norm(text_embeds)  # 3  (L, Dl)
    norms = torch.linalg.vector_norm(t_hat if config.gate == "llava" else text_embeds, dim=-1)
    gate = norms / (norms.max() + MINMAX_EPS)
    t_tilde = gate[:, None] * t_hat
    sim = v @ t_tilde.T  # 4  (N, L)
    w = torch.softmax(sim / config.text_temperature, dim=1)  # 5
    return (w * sim).sum(dim=1)


def sharpen(relevance: torch.Tensor, config: SelectorConfig) -> torch.Tensor:
    """Step 6: q = minmax(softmax(s / patch_temperature) ** power), (N,) in [0, 1]."""
    p = torch.softmax(relevance / config.patch_temperature, dim=0)
    return minmax(p**config.power)


def extrinsic_scores(q: torch.Tensor, config: SelectorConfig) -> torch.Tensor:
    """Step 7: the top-p gate on q, then S_ext = minmax; (N,)."""
    theta = torch.quantile(q, 1 - config.top_p)  # linear interpolation
    return minmax(torch.where(q >= theta, q, config.attenuation * q))


def fuse(s_int: torch.Tensor, s_ext: torch.Tensor, config: SelectorConfig) -> torch.Tensor:
    """Step 8: F = exp((1 - eta) log max(S_int, 1e-6) + eta log max(S_ext, 1e-6))."""
    log_int = torch.log(s_int.clamp_min(LOG_FLOOR))
    log_ext = torch.log(s_ext.clamp_min(LOG_FLOOR))
    return torch.exp((1 - config.eta) * log_int + config.eta * log_ext)


def no_text_scores(n_tokens: int) -> torch.Tensor:
    """Step 8's S_ext when there is no text: 1e-6 everywhere, so F ranks by saliency alone."""
    return torch.full((n_tokens,), LOG_FLOOR)


def scores(
    cls_attention: torch.Tensor,  # (N,) a
    projected_features: torch.Tensor,  # (N, Dl) P(X)
    text_embeds: torch.Tensor,  # (L, Dl) T, unmasked rows only; L may be 0
    config: SelectorConfig,
    groups: int = 1,  # a clip's temporal groups under the joint rule: S_int normalised per group
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps 1-8: (s, q, F); s and q are NaN when there is no text (S_ext = 1e-6 then)."""
    s_int = intrinsic_scores(cls_attention, groups)
    if text_embeds.shape[0] == 0:
        unused = torch.full_like(s_int, float("nan"))
        return unused, unused, fuse(s_int, no_text_scores(s_int.shape[0]), config)
    relevance = text_relevance(projected_features, text_embeds, config)
    sharpened = sharpen(relevance, config)
    return relevance, sharpened, fuse(s_int, extrinsic_scores(sharpened, config), config)


def fused_scores(
    cls_attention: torch.Tensor,  # (N,) a
    projected_features: torch.Tensor,  # (N, Dl) P(X)
    text_embeds: torch.Tensor,  # (L, Dl) T, unmasked rows only; L may be 0
    config: SelectorConfig,
) -> torch.Tensor:
    """Steps 1-8: F, the log-domain fusion of intrinsic saliency and query relevance."""
    return scores(cls_attention, projected_features, text_embeds, config)[2]


def residual_prune(
    gram: torch.Tensor,  # (N, N) G = Z Z^T
    residual: torch.Tensor,  # (|R0|,) R in partition order
    k_div: int,
    step: int,  # the effective s (after any max_rounds cap)
    expected_rounds: int | None = None,  # when given, the loop must run exactly this many rounds
) -> torch.Tensor:
    """Step 11, Algorithm 1: the kept residual tokens (k_div,), in list order."""
    round_index = 0
    while True:
        r = min(step, len(residual) - k_div, math.ceil(len(residual) / 2))
        if r <= 0:
            assert expected_rounds in (None, round_index), (round_index, expected_rounds)
            return residual
        a_side, b_side = residual[0::2], residual[1::2]
        m = gram[a_side][:, b_side].amax(dim=1)  # most similar partner in B, for each a
        o = torch.sort(m, descending=True, stable=True).indices  # ties: lower position in A first
        residual = torch.cat([a_side[o[r:]], b_side])
        round_index += 1


def decide(
    fused: torch.Tensor,  # (N,) F, from any backend
    gram: torch.Tensor,  # (N, N) G, from the same backend
    schedule: RoundSchedule,
    trace: bool = False,
):
    """Steps 9, 11 and 12 on given F and G: indices (K,) int64 ascending (and the partition with trace=True)."""
    n = fused.shape[0]
    if schedule.keeps_all:
        indices = torch.arange(n, dtype=torch.int64)
        return (indices, indices, indices[:0]) if trace else indices
    # 9: partition by F, ties to the lower token index (stable sort)
    order = torch.sort(fused, descending=True, stable=True).indices
    important, residual = order[: schedule.k_imp], order[schedule.k_imp :]
    # 11: iterative bipartite residual pruning
    residual = residual_prune(gram, residual, schedule.k_div, schedule.step, schedule.n_rounds)
    # 12: ascending indices
    indices = torch.sort(torch.cat([important, residual])).values
    return (indices, important, residual) if trace else indices


def reference_select(
    vision_features: torch.Tensor,  # (N, Dv) X
    cls_attention: torch.Tensor,  # (N,) a
    projected_features: torch.Tensor,  # (N, Dl) P(X)
    text_embeds: torch.Tensor,  # (L, Dl) unmasked text rows
    budget: int,
    config: SelectorConfig = SelectorConfig(),
    trace: bool = False,
):
    """Indices (K,) int64 ascending; with trace=True also a ReferenceTrace."""
    schedule = round_schedule(vision_features.shape[0], budget, config)
    relevance, sharpened, fused = scores(cls_attention, projected_features, text_embeds, config)  # 1-8
    gram = gram_matrix(vision_features)  # 10
    indices, important, residual = decide(fused, gram, schedule, trace=True)  # 9, 11, 12
    return (indices, ReferenceTrace(relevance, sharpened, fused, gram, important, residual)) if trace else indices


def reference_select_batch(
    vision_features: torch.Tensor,  # (B, N, Dv)
    cls_attention: torch.Tensor,  # (B, N)
    projected_features: torch.Tensor,  # (B, N, Dl)
    text_embeds: torch.Tensor,  # (B, T, Dl)
    text_mask: torch.Tensor | None,  # (B, T) bool; None means every row is text
    budget: int,
    config: SelectorConfig = SelectorConfig(),
) -> torch.Tensor:
    """(B, K) int64: each image on its own, masked text rows removed."""
    rows = []
    for b in range(vision_features.shape[0]):
        text = text_embeds[b] if text_mask is None else text_embeds[b][text_mask[b].bool()]
        rows.append(reference_select(vision_features[b], cls_attention[b], projected_features[b], text, budget, config))
    return torch.stack(rows)


def pruning_inputs(
    vision_features: torch.Tensor,  # (B, N, Dv)
    cls_attention: torch.Tensor,  # (B, N)
    projected_features: torch.Tensor,  # (B, N, Dl)
    text_embeds: torch.Tensor,  # (B, T, Dl)
    text_mask: torch.Tensor,  # (B, T) bool
    budget: int,
    config: SelectorConfig = SelectorConfig(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's own step-11 inputs per image: Gram (B, N, N) and residual list (B, |R0|).

    What the ResidualPrune plugin and its CPU twin receive, so they can be checked against
    residual_prune on exactly the reference's data. Needs K < N.
    """
    grams, residuals = [], []
    for b in range(vision_features.shape[0]):
        text = text_embeds[b][text_mask[b].bool()]
        _, trace = reference_select(vision_features[b], cls_attention[b], projected_features[b], text, budget, config, trace=True)
        grams.append(trace.gram)
        residuals.append(torch.sort(trace.fused_scores, descending=True, stable=True).indices[len(trace.important) :])
    return torch.stack(grams), torch.stack(residuals)
