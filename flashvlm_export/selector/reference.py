"""The reference selector: eager PyTorch, a dynamic loop, read side by side with shared/ALGORITHM.md.

It is the gold standard of every parity check. One image at a time; `reference_select_batch`
loops over a batch and drops masked text rows before scoring, so padding cannot matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.ops import LOG_FLOOR, MINMAX_EPS, l2norm, minmax
from flashvlm_export.selector.schedule import round_schedule

NEAR_TIE_RTOL = 1e-6  # ALGORITHM.md: a score gap below 1e-6 relative is a near-tie


@dataclass(frozen=True)
class NearTie:
    stage: str  # "partition" or "round <i>"
    token_a: int
    token_b: int
    score_a: float
    score_b: float

    @property
    def gap(self) -> float:
        return relative_gap(self.score_a, self.score_b)

    def __str__(self) -> str:
        return (
            f"{self.stage}: tokens {self.token_a} and {self.token_b} "
            f"scores {self.score_a:.9g} vs {self.score_b:.9g} (relative gap {self.gap:.2e})"
        )


@dataclass
class ReferenceTrace:
    """What the reference decided on the way, for explaining a mismatch."""

    fused_scores: torch.Tensor  # (N,) F
    order: torch.Tensor  # (N,) argsort(F, descending, stable)
    important: torch.Tensor  # (K_imp,) I
    residual: torch.Tensor  # (K_div,) R after the last round
    near_ties: list[NearTie] = field(default_factory=list)  # decisive adjacent pairs closer than 1e-6 relative
    gram: torch.Tensor | None = None  # (N, N) G, step 11's input (None when K >= N keeps everything)


def relative_gap(a: float, b: float) -> float:
    scale = max(abs(a), abs(b))
    return 0.0 if scale == 0.0 else abs(a - b) / scale


def _near_ties(stage: str, tokens: torch.Tensor, sorted_scores: torch.Tensor, first_decisive: int) -> list[NearTie]:
    """Adjacent pairs (p, p+1), p + 1 >= first_decisive, of a descending sort that are within 1e-6 relative."""
    ties = []
    values = sorted_scores.tolist()
    ids = tokens.tolist()
    for p in range(max(first_decisive - 1, 0), len(values) - 1):
        if relative_gap(values[p], values[p + 1]) < NEAR_TIE_RTOL:
            ties.append(NearTie(stage, ids[p], ids[p + 1], values[p], values[p + 1]))
    return ties


def fused_scores(
    cls_attention: torch.Tensor,  # (N,) a
    projected_features: torch.Tensor,  # (N, Dl) P(X)
    text_embeds: torch.Tensor,  # (L, Dl) T, unmasked rows only; L may be 0
    config: SelectorConfig,
) -> torch.Tensor:
    """Steps 1-8: F, the log-domain fusion of intrinsic saliency and query relevance."""
    a = cls_attention
    s_int = (a - a.min()) / (a.max() - a.min() + MINMAX_EPS)  # 1
    if text_embeds.shape[0] == 0:
        s_ext = torch.full_like(s_int, LOG_FLOOR)  # 8: no text, rank by saliency alone
    else:
        v = l2norm(projected_features)  # 2  (N, Dl)
        t_hat = l2norm(text_embeds)  # 3  (L, Dl)
        if config.gate == "llava":
            norms = torch.linalg.vector_norm(t_hat, dim=-1)
        else:  # "norm"
            norms = torch.linalg.vector_norm(text_embeds, dim=-1)
        gate = norms / (norms.max() + MINMAX_EPS)
        t_tilde = gate[:, None] * t_hat
        sim = v @ t_tilde.T  # 4  (N, L)
        w = torch.softmax(sim / config.text_temperature, dim=1)  # 5
        s = (w * sim).sum(dim=1)  # (N,)
        p = torch.softmax(s / config.patch_temperature, dim=0)  # 6
        q = minmax(p**config.power)
        theta = torch.quantile(q, 1 - config.top_p)  # 7, linear interpolation
        q = torch.where(q >= theta, q, config.attenuation * q)
        s_ext = minmax(q)
    log_int = torch.log(s_int.clamp_min(LOG_FLOOR))  # 8
    log_ext = torch.log(s_ext.clamp_min(LOG_FLOOR))
    return torch.exp((1 - config.eta) * log_int + config.eta * log_ext)


def residual_prune(
    gram: torch.Tensor,  # (N, N) G = Z Z^T
    residual: torch.Tensor,  # (|R0|,) R in partition order
    k_div: int,
    step: int,  # the effective s (after any max_rounds cap)
    near_ties: list[NearTie] | None = None,  # when a list, decisive near-ties are appended
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
        sorted_m, o = torch.sort(m, descending=True, stable=True)
        if near_ties is not None:
            near_ties += _near_ties(f"round {round_index}", a_side[o], sorted_m, r)
        residual = torch.cat([a_side[o[r:]], b_side])
        round_index += 1


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
    n = vision_features.shape[0]
    schedule = round_schedule(n, budget, config)
    f = fused_scores(cls_attention, projected_features, text_embeds, config)
    if schedule.keeps_all:
        indices = torch.arange(n, dtype=torch.int64)
        everything = ReferenceTrace(f, indices, indices, indices[:0])
        return (indices, everything) if trace else indices

    # 9: partition by F, ties to the lower token index (stable sort)
    sorted_f, order = torch.sort(f, descending=True, stable=True)
    important = order[: schedule.k_imp]
    residual = order[schedule.k_imp :]
    ties = _near_ties("partition", order, sorted_f, schedule.k_imp) if trace else []

    # 10: Gram of the l2-normalised pre-projector features
    z = l2norm(vision_features)
    gram = z @ z.T  # (N, N)

    # 11: iterative bipartite residual pruning
    residual = residual_prune(gram, residual, schedule.k_div, schedule.step, ties if trace else None, schedule.n_rounds)

    # 12: ascending indices
    indices = torch.sort(torch.cat([important, residual])).values
    if not trace:
        return indices
    return indices, ReferenceTrace(f, order, important, residual, ties, gram)


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
        residuals.append(trace.order[len(trace.important) :])
    return torch.stack(grams), torch.stack(residuals)
