"""The static-shape selector: the same maths as the reference with N, K and T_max fixed at build time.

Export rules it keeps (ONNX opset >= 17, TensorRT's ONNX parser):
- no Loop, If, NonZero or data-dependent shapes: the round schedule is computed from
  (N, K, step, max_rounds) and unrolled;
- every TopK has K <= 3840 (TensorRT's limit);
- no op that TensorRT 10.3's ONNX parser builds as a loop (CumSum: `running_count` counts with two MatMuls);
- the Gram matrix is computed once, flattened, and each round gathers only its A x B block.

Ties: the partition and every pruning round order their scores with `stable_descending_order`, so
"lower index (or position) first" holds on every backend whatever its own TopK tie rule: a TopK sorts
the scores, and the runs of tied scores are re-sorted by a TopK over distinct small integers. On TensorRT the rounds can run in the ResidualPrune plugin.

With verification=True the module also returns the fused scores F and the Gram G, the inputs of
the decisions (ALGORITHM.md "Parity", layer 1); the exported graph keeps them as named internal
tensors, and a verification build exposes them as outputs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.ops import LOG_FLOOR, MINMAX_EPS, l2norm, lerp, minmax, quantile_position
from flashvlm_export.selector.reference import gram_matrix
from flashvlm_export.selector.schedule import RoundSchedule, round_schedule

TOPK_LIMIT = 3840  # TensorRT's largest TopK K


def exporting() -> bool:
    """True while torch.onnx (dynamo or TorchScript) traces the module."""
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export()


def running_count(flags: torch.Tensor) -> torch.Tensor:
    """(B, n) float32 of 0/1 -> (B, n) float32: flags[:, : i + 1].sum(-1) at each i, exact, without CumSum.

    TensorRT 10.3 has no cumulative layer, and its ONNX parser builds CumSum as a loop of n sequential steps
    (docs/TENSORRT.md "What the static-graph check refuses"). Here the n slots are cut into `blocks` blocks of
    side = ceil(sqrt(n)): a MatMul with a constant (side, side) upper-triangular matrix of
    ones counts within each block, and a MatMul with a constant (blocks, blocks) strictly lower-triangular one
    adds the totals of the blocks before. Every product is 0 or 1 and every sum an integer <= n < 2**24, so
    float32 (and TF32, whose 10-bit mantissa holds 0 and 1) computes it exactly in any order of summation.
    """
    batch, n = (int(d) for d in flags.shape)  # Python ints: TorchScript's tracer would make each size a computed shape
    side = math.isqrt(n - 1) + 1
    blocks = -(-n // side)
    if blocks * side > n:
        flags = torch.cat([flags, torch.zeros(batch, blocks * side - n, dtype=flags.dtype)], dim=1)
    upper = torch.triu(torch.ones(side, side, dtype=flags.dtype))  # [j, i] = 1 where j <= i
    earlier = torch.tril(torch.ones(blocks, blocks, dtype=flags.dtype), diagonal=-1)  # [k, l] = 1 where l < k
    within = flags.reshape(batch, blocks, side) @ upper  # (B, blocks, side): the count inside each block so far
    if blocks > 1:
        within = within + earlier @ within[:, :, -1:]  # plus (B, blocks, 1): the count in the blocks before each one
    return within.reshape(batch, blocks * side)[:, :n]


def stable_descending_order(x: torch.Tensor) -> torch.Tensor:
    """(B, n) -> (B, n) int64: argsort descending, ties to the lower position, exact on any backend.

    A TopK over x sorts the values (exact: comparisons); where values tie, its order among them is the
    backend's own, so the tie groups are re-sorted: group g (a run of equal sorted values, numbered by a
    running count of value changes) and position i give the key g * n + i, distinct integers below
    n**2 <= 2**24 (n <= 4096), held exactly in float32, and a TopK over those keys has no ties to break.
    O(n log n) for the sorts, against the n x n comparisons of ranking every pair.
    """
    n = x.shape[-1]
    values, order = torch.topk(x, n, dim=-1, largest=True, sorted=True)
    first = torch.ones_like(values[:, :1])
    change = torch.cat([first, (values[:, 1:] != values[:, :-1]).to(values.dtype)], dim=-1)  # Equal on float32
    group = running_count(change) - 1  # (B, n), exact integers in float32
    keys = group * n + order.to(torch.float32)  # distinct integers < n**2
    regrouped = torch.topk(keys, n, dim=-1, largest=False, sorted=True).indices
    return torch.gather(order, 1, regrouped)


class StaticScores(nn.Module):
    """Steps 1-8 with a text mask instead of dropped rows: returns F (B, N), and s and q (B, N) of steps 5 and 6."""

    def __init__(self, n_tokens: int, config: SelectorConfig, groups: int = 1):
        """`groups` > 1: a clip's temporal groups under the joint rule, S_int normalised per group (selector/clip.py)."""
        super().__init__()
        self.config = config
        self.groups = groups
        self.quantile_lower, self.quantile_weight = quantile_position(n_tokens, 1 - config.top_p)
        self.quantile_k = n_tokens - self.quantile_lower  # TopK from the top reaching the lower index

    def forward(self, cls_attention, projected_features, text_embeds, text_mask):
        c = self.config
        a = cls_attention  # (B, N)
        if self.groups > 1:
            a = a.reshape(a.shape[0], self.groups, -1)  # (B, G, n)
        s_int = (a - a.amin(-1, keepdim=True)) / (a.amax(-1, keepdim=True) - a.amin(-1, keepdim=True) + MINMAX_EPS)
        s_int = s_int.reshape(cls_attention.shape)

        mask = text_mask.to(torch.bool)  # (B, T)
        text = text_embeds * mask[..., None].to(text_embeds.dtype)  # masked rows take part in nothing
        v = l2norm(projected_features)  # (B, N, Dl)
        t_hat = l2norm(text)  # (B, T, Dl)
        norms = torch.linalg.vector_norm(t_hat if c.gate == "llava" else text, dim=-1)  # (B, T)
        norms = torch.where(mask, norms, torch.zeros_like(norms))
        gate = norms / (norms.amax(-1, keepdim=True) + MINMAX_EPS)
        t_tilde = gate[..., None] * t_hat  # (B, T, Dl)
        sim = v @ t_tilde.transpose(1, 2)  # (B, N, T)
        logits = sim / c.text_temperature
        logits = torch.where(mask[:, None, :], logits, torch.full_like(logits, torch.finfo(torch.float32).min))
        w = torch.softmax(logits, dim=-1)
        s = relevance = (w * sim).sum(dim=-1)  # (B, N)
        p = torch.softmax(s / c.patch_temperature, dim=-1)
        sharpened = q = minmax(p**c.power)
        top = torch.topk(q, self.quantile_k, dim=-1, largest=True, sorted=True).values  # (B, k) descending
        theta = lerp(top[:, -1:], top[:, -2:-1], self.quantile_weight)  # (B, 1)
        q = torch.where(q >= theta, q, c.attenuation * q)
        s_ext = minmax(q)
        has_text = mask.any(dim=-1, keepdim=True)  # (B, 1)
        s_ext = torch.where(has_text, s_ext, torch.full_like(s_ext, LOG_FLOOR))

        log_int = torch.log(s_int.clamp_min(LOG_FLOOR))
        log_ext = torch.log(s_ext.clamp_min(LOG_FLOOR))
        return torch.exp((1 - c.eta) * log_int + c.eta * log_ext), relevance, sharpened  # (B, N) each


class UnrolledResidualPrune(nn.Module):
    """Step 11 unrolled: (gram (B, N, N), residual (B, |R0|)) -> kept residual (B, K_div), in list order."""

    def __init__(self, schedule: RoundSchedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, gram: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        batch, n, _ = gram.shape
        gram_flat = gram.reshape(batch, n * n)
        for r in self.schedule.removals:
            a_side, b_side = residual[:, 0::2], residual[:, 1::2]  # (B, nA), (B, nB)
            n_a, n_b = a_side.shape[1], b_side.shape[1]
            flat = (a_side[:, :, None] * n + b_side[:, None, :]).reshape(batch, n_a * n_b)
            block = torch.gather(gram_flat, 1, flat).reshape(batch, n_a, n_b)  # G[A][:, B]
            m = block.amax(dim=-1)  # (B, nA)
            order = stable_descending_order(m)  # exact: ties to the lower position in A
            kept_a = torch.gather(a_side, 1, order[:, r:])
            residual = torch.cat([kept_a, b_side], dim=1)
        return residual


class StaticSelector(nn.Module):
    """The selection core with static shapes: (X, a, P(X), T, mask) -> indices (B, K) int64 ascending.

    With verification=True: (indices, text_relevance s, sharpened_scores q, fused_scores F (B, N) each, gram G
    (B, N, N)): the scores of steps 5 and 6, and the inputs of the decisions.
    """

    def __init__(
        self,
        n_tokens: int,
        budget: int,
        config: SelectorConfig = SelectorConfig(),
        prune: nn.Module | None = None,
        verification: bool = False,
        schedule: RoundSchedule | None = None,
    ):
        """`schedule` is round_schedule(n_tokens, budget, config) when the caller computed it already."""
        super().__init__()
        self.config = config
        self.schedule = schedule if schedule is not None else round_schedule(n_tokens, budget, config)
        if (self.schedule.n_tokens, self.schedule.budget) != (n_tokens, budget):
            raise ValueError(
                f"a schedule for N={self.schedule.n_tokens}, K={self.schedule.budget} given to N={n_tokens}, K={budget}"
            )
        if n_tokens > TOPK_LIMIT:
            raise UsageError(f"N={n_tokens} exceeds TensorRT's TopK limit {TOPK_LIMIT}; select per crop or frame")
        self.scores = StaticScores(n_tokens, config)
        self.prune = prune if prune is not None else UnrolledResidualPrune(self.schedule)
        self.verification = verification and not self.schedule.keeps_all  # keeping all decides nothing

    def partition(self, fused: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        order = stable_descending_order(fused)  # (B, N)
        return order[:, : self.schedule.k_imp], order[:, self.schedule.k_imp :]

    def forward(self, vision_features, cls_attention, projected_features, text_embeds, text_mask):
        batch, n, _ = vision_features.shape
        if self.schedule.keeps_all:
            return torch.arange(n, dtype=torch.int64).expand(batch, n)
        fused, relevance, sharpened = self.scores(cls_attention, projected_features, text_embeds, text_mask)  # (B, N) each
        important, residual = self.partition(fused)
        gram = gram_matrix(vision_features)  # (B, N, N)
        kept = torch.cat([important, self.prune(gram, residual)], dim=1)  # (B, K)
        # ascending: a TopK over distinct small integers held exactly in float32
        ascending = torch.topk(kept.to(torch.float32), kept.shape[1], dim=-1, largest=False, sorted=True).values
        indices = ascending.to(torch.int64)
        return (indices, relevance, sharpened, fused, gram) if self.verification else indices
