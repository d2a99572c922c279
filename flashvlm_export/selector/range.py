"""The static selector of a budget range (issue 23): one graph, a budget per image, in KMIN..KMAX.

`RangeSelector` takes `budget` (B,) int64 beside the fixed selector's inputs and returns indices (B, KMAX):
the image's K_b kept tokens ascending, then -1; and `kept` (B,) int64, the number of them. For each image
it returns exactly what `StaticSelector` at that image's budget returns, by the same operations on the same
floats (F and G are computed as the fixed selector computes them; the decisions are comparisons, max and
integer gathers, so padding and masking change no value that decides):

- step 9: one exact-rank order of F; the partition cuts it per image at K_imp(K_b) = floor(ratio * K_b);
  the residual list R0 is padded to the longest |R0| (the smallest budget's) with -1;
- step 11 (`UnrolledRangePrune`): `RangeSchedule.n_rounds` rounds, the most any budget needs; round j
  removes `removals_table[K_b - KMIN][j]` tokens from image b, and is a no-op where that is 0. The A/B
  alternation runs over the image's own valid list (a prefix: padding is always at the end); padded B
  columns take part in no max, padded A rows rank after every valid one (padding reads a sentinel row and
  column of G holding float32's lowest, below any cosine), so the valid rows keep exactly the fixed
  selector's ranks;
- step 12: the kept tokens sorted ascending by a TopK over distinct integers (padding becomes N + its
  slot, so the TopK has no ties either).

No Loop, If or NonZero; every shape is static; every TopK K is at most N <= 3840.

A budget outside KMIN..KMAX reaching the graph is clamped into the range (a budget below KMIN selects KMIN
tokens, one above KMAX selects KMAX): `kept` says how many were selected. The runtimes refuse such a
budget before the graph sees it (runtime/budgets.py).
"""

from __future__ import annotations

import torch
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.reference import gram_matrix
from flashvlm_export.selector.schedule import RangeSchedule, range_schedule
from flashvlm_export.selector.static import TOPK_LIMIT, StaticScores, stable_descending_order

PAD = -1  # an index slot with no token


def budget_rows(budget: torch.Tensor, schedule: RangeSchedule) -> torch.Tensor:
    """(B,) int64 budgets -> (B,) rows of the schedule's tables: the budget clamped into the range, minus KMIN."""
    return budget.to(torch.int64).clamp(schedule.k_min, schedule.k_max) - schedule.k_min


def _table(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


def _per_round(schedule: RangeSchedule, rule) -> torch.Tensor:
    """(budgets, n_rounds) int64: rule(|R| at the round's start, the round's removal) for every budget and round."""
    pairs = zip(schedule.sizes_table, schedule.removals_table, strict=True)
    return _table([[rule(size, r) for size, r in zip(sizes, removals, strict=True)] for sizes, removals in pairs])


def round_widths(schedule: RangeSchedule) -> list[int]:
    """The static width of the residual list entering each round, and after the last: the longest list any budget
    has then (a budget past its own rounds keeps its K_div)."""
    sizes = schedule.sizes_table
    widths = [max(row[j] for row in sizes) for j in range(schedule.n_rounds)]
    return [schedule.residual_size, *widths[1:], schedule.k_div_max]


class UnrolledRangePrune(nn.Module):
    """Step 11 for a budget per image: (gram (B, N, N) f32, residual (B, residual_size) int64 padded with -1,
    budget (B,) int64) -> the kept residual (B, k_div_max) int64 in list order, -1 after the image's K_div.

    The plugin twin (plugin/node.py PluginRangePrune) has this signature, so `RangeSelector.prune` can be swapped.
    """

    def __init__(self, schedule: RangeSchedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, gram: torch.Tensor, residual: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        batch, n, _ = gram.shape
        rows = budget_rows(budget, s)
        removals = _table(s.removals_table)[rows]  # (B, n_rounds)
        # each round's counts per budget, worked out here in Python integers: the graph divides no integer (the
        # exporter lowers an int64 floor division to an Equal on booleans, which TensorRT's parser does not take)
        kept_a_table = _per_round(s, lambda size, r: (size + 1) // 2 - r)[rows]  # (B, n_rounds): ranked A kept
        filled_table = _per_round(s, lambda size, r: size - r)[rows]  # (B, n_rounds): ranked A kept, then B
        # G with a sentinel row and column N of float32's lowest: a padded slot (-1) reads them, so a padded B column
        # takes part in no max and a padded A row's m is the lowest of all (it ranks after every valid one), with
        # no mask pass over each round's block; valid entries read exactly G's own floats
        lowest = torch.finfo(torch.float32).min
        side = n + 1
        column = gram[:, :, :1] * 0 + lowest  # (B, N, 1) by slicing, not Pad: TorchScript exports Pad with a computed shape
        gram = torch.cat([gram, column], dim=2)
        gram = torch.cat([gram, gram[:, :1, :] * 0 + lowest], dim=1)  # (B, N + 1, N + 1)
        gram_flat = gram.reshape(batch, side * side)
        widths = round_widths(s)
        for j in range(s.n_rounds):
            r = removals[:, j]  # (B,)
            a_side, b_side = residual[:, 0::2], residual[:, 1::2]  # (B, nA), (B, nB): padding at the end of each
            n_a, n_b = a_side.shape[1], b_side.shape[1]
            a_rows = torch.where(a_side >= 0, a_side, n)
            b_cols = torch.where(b_side >= 0, b_side, n)
            flat = (a_rows[:, :, None] * side + b_cols[:, None, :]).reshape(batch, n_a * n_b)
            m = torch.gather(gram_flat, 1, flat).reshape(batch, n_a, n_b).amax(dim=-1)  # (B, nA): max of G[A][:, B]
            order = stable_descending_order(m)
            ranked_a = torch.gather(a_side, 1, order)  # valid A in the fixed selector's order, then padding
            # the new list: ranked A from position r on (ceil(L/2) - r of them), then B's floor(L/2), then padding
            kept_a, filled = kept_a_table[:, j], filled_table[:, j]  # (B,) each
            width = widths[j + 1]
            p = torch.arange(width, dtype=torch.int64)[None, :]  # (1, W)
            source = torch.where(p < kept_a[:, None], r[:, None] + p, n_a + p - kept_a[:, None])
            valid = p < filled[:, None]
            source = torch.where(valid, source, 0)
            pruned = torch.gather(torch.cat([ranked_a, b_side], dim=1), 1, source)
            pruned = torch.where(valid, pruned, PAD)
            residual = torch.where(r[:, None] > 0, pruned, residual[:, :width])  # r = 0: this image's rounds are done
        return residual[:, : s.k_div_max]


class RangeSelector(nn.Module):
    """The selection core for a budget range: (X, a, P(X), T, mask, budget (B,) int64) -> indices (B, KMAX) int64
    ascending then -1, kept (B,) int64.

    With verification=True: (indices, kept, s, q, F (B, N) each, G (B, N, N)), as StaticSelector's.
    """

    ranged = True  # SelectorWithEmbeds: the module takes a budget and returns kept

    def __init__(
        self,
        n_tokens: int,
        k_min: int,
        k_max: int,
        config: SelectorConfig = SelectorConfig(),
        prune: nn.Module | None = None,
        verification: bool = False,
        schedule: RangeSchedule | None = None,
    ):
        super().__init__()
        self.config = config
        self.schedule = schedule if schedule is not None else range_schedule(n_tokens, k_min, k_max, config)
        if (self.schedule.n_tokens, self.schedule.k_min, self.schedule.k_max) != (n_tokens, k_min, k_max):
            raise ValueError(
                f"a schedule for N={self.schedule.n_tokens}, {self.schedule.k_min}..{self.schedule.k_max} given to N={n_tokens}, {k_min}..{k_max}"
            )
        if n_tokens > TOPK_LIMIT:
            raise UsageError(f"N={n_tokens} exceeds TensorRT's TopK limit {TOPK_LIMIT}; select per crop or frame")
        self.scores = StaticScores(n_tokens, config)
        self.prune = prune if prune is not None else UnrolledRangePrune(self.schedule)
        self.verification = verification

    def partition(self, fused: torch.Tensor, budget: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(important (B, max K_imp), residual (B, residual_size)), each cut per image and padded with -1."""
        s = self.schedule
        n = fused.shape[-1]
        order = stable_descending_order(fused)  # (B, N)
        k_imp = _table([r.k_imp for r in s.schedules])[budget_rows(budget, s)][:, None]  # (B, 1)
        widest = max(r.k_imp for r in s.schedules)
        p = torch.arange(widest, dtype=torch.int64)[None, :]
        important = torch.where(p < k_imp, order[:, :widest], PAD)
        source = k_imp + torch.arange(s.residual_size, dtype=torch.int64)[None, :]  # (B, residual_size)
        inside = source < n
        residual = torch.gather(order, 1, torch.where(inside, source, 0))
        return important, torch.where(inside, residual, PAD)

    def forward(self, vision_features, cls_attention, projected_features, text_embeds, text_mask, budget):
        n = vision_features.shape[1]
        fused, relevance, sharpened = self.scores(cls_attention, projected_features, text_embeds, text_mask)
        budget = budget_rows(budget, self.schedule) + self.schedule.k_min  # clamped once: the partition and the prune
        important, residual = self.partition(fused, budget)  # agree (the plugin refuses an out-of-range budget)
        gram = gram_matrix(vision_features)  # (B, N, N)
        chosen = torch.cat([important, self.prune(gram, residual, budget)], dim=1)  # (B, >= KMAX), -1 padded
        # ascending: padding becomes N + its slot, so a TopK over distinct small integers (exact in float32) sorts all
        slots = torch.arange(chosen.shape[1], dtype=torch.int64)[None, :] + n
        keys = torch.where(chosen >= 0, chosen, slots).to(torch.float32)
        ascending = torch.topk(keys, self.schedule.k_max, dim=-1, largest=False, sorted=True).values.to(torch.int64)
        indices = torch.where(ascending < n, ascending, PAD)
        kept = (indices >= 0).to(torch.float32).sum(dim=-1).to(torch.int64)  # (B,): K_b
        return (indices, kept, relevance, sharpened, fused, gram) if self.verification else (indices, kept)
