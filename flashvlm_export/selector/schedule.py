"""The residual-pruning round schedule: it depends on (N, K, step, max_rounds) only, never on data.

This is what lets the rounds be unrolled into a static graph (ALGORITHM.md step 11).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from flashvlm_export.errors import UsageError
from flashvlm_export.selector.config import SelectorConfig


@dataclass(frozen=True)
class RoundSchedule:
    n_tokens: int  # N
    budget: int  # K
    k_imp: int  # important tokens kept by score
    k_div: int  # diverse residual tokens kept by pruning
    step: int  # effective s (raised by max_rounds when set)
    sizes: tuple[int, ...]  # |R| at the start of each round
    removals: tuple[int, ...]  # r removed in each round

    @property
    def keeps_all(self) -> bool:
        return self.budget >= self.n_tokens

    @property
    def n_rounds(self) -> int:
        return len(self.removals)

    @property
    def residual_size(self) -> int:
        """|R0|, the length of the residual list entering round 0."""
        return self.n_tokens - self.k_imp


MIN_BUDGET = 2  # pruning needs two halves


def check_budget_range(budget: int, n_tokens: int, name: str = "budget", where: str = "") -> None:
    """The budget range rule of an exported graph, MIN_BUDGET <= K <= N; `name` and `where` say whose budget it is."""
    if not MIN_BUDGET <= budget <= n_tokens:
        raise UsageError(f"{name} {budget} is out of range{where}; use {MIN_BUDGET} <= K <= {n_tokens}")


def check_budget(n_tokens: int, budget: int) -> None:
    """The schedule's own rule: K >= MIN_BUDGET (a K at or above N keeps every token)."""
    if budget < MIN_BUDGET:
        raise UsageError(f"budget {budget} is too small: use a budget >= {MIN_BUDGET} (pruning needs two halves)")
    if n_tokens < 1:
        raise UsageError(f"n_tokens {n_tokens} must be >= 1")


def round_schedule(n_tokens: int, budget: int, config: SelectorConfig = SelectorConfig()) -> RoundSchedule:
    """Sizes and removals of every pruning round; K >= N keeps every token (no rounds)."""
    check_budget(n_tokens, budget)
    if budget >= n_tokens:
        return RoundSchedule(n_tokens, budget, n_tokens, 0, config.step, (), ())
    k_imp = math.floor(config.important_ratio * budget)
    k_div = budget - k_imp
    if k_div < 1:
        raise UsageError(
            f"important_ratio={config.important_ratio} leaves no diverse tokens at budget {budget}; "
            "lower important_ratio so that K - floor(ratio * K) >= 1"
        )
    size = n_tokens - k_imp
    step = config.step
    if config.max_rounds is not None:
        step = max(step, math.ceil((size - k_div) / config.max_rounds))
    sizes, removals = [], []
    while True:
        r = min(step, size - k_div, math.ceil(size / 2))
        if r <= 0:
            break
        sizes.append(size)
        removals.append(r)
        size -= r
    return RoundSchedule(n_tokens, budget, k_imp, k_div, step, tuple(sizes), tuple(removals))


@dataclass(frozen=True)
class RangeSchedule:
    """The schedules of every budget K in k_min..k_max of one selector that takes its budget per image (issue 23).

    A static graph runs `n_rounds` rounds (the most any budget needs: the smallest); round j of an image whose
    budget is K removes `removals_table[K - k_min][j]` tokens (0 once K's own rounds are done), from a list
    of `sizes_table[K - k_min][j]` (its length then). Lists are padded to `residual_size` (the longest |R0|,
    the smallest budget's) and the kept residual to `k_div_max` (the largest K_div, the largest budget's).
    """

    n_tokens: int
    k_min: int
    k_max: int
    schedules: tuple[RoundSchedule, ...]  # one per K = k_min .. k_max

    def of(self, budget: int) -> RoundSchedule:
        if not self.k_min <= budget <= self.k_max:
            raise UsageError(f"budget {budget} is outside the selector's range {self.k_min}..{self.k_max}")
        return self.schedules[budget - self.k_min]

    @property
    def n_rounds(self) -> int:
        return max(s.n_rounds for s in self.schedules)

    @property
    def residual_size(self) -> int:
        return max(s.residual_size for s in self.schedules)

    @property
    def k_div_max(self) -> int:
        return max(s.k_div for s in self.schedules)

    @property
    def removals_table(self) -> tuple[tuple[int, ...], ...]:
        n = self.n_rounds
        return tuple(s.removals + (0,) * (n - s.n_rounds) for s in self.schedules)

    @property
    def sizes_table(self) -> tuple[tuple[int, ...], ...]:
        """|R| at the start of each round per budget; after a budget's own rounds, its final size K_div."""
        n = self.n_rounds
        return tuple(s.sizes + (s.k_div,) * (n - s.n_rounds) for s in self.schedules)


def range_schedule(n_tokens: int, k_min: int, k_max: int, config: SelectorConfig = SelectorConfig()) -> RangeSchedule:
    """Every budget's schedule, k_min..k_max (MIN_BUDGET <= k_min < k_max <= N)."""
    check_budget_range(k_min, n_tokens, "the range's smallest budget")
    check_budget_range(k_max, n_tokens, "the range's largest budget")
    if k_min >= k_max:
        raise UsageError(f"budget range {k_min}..{k_max} is empty or one budget; use KMIN..KMAX with KMIN < KMAX")
    schedules = tuple(round_schedule(n_tokens, k, config) for k in range(k_min, k_max + 1))
    return RangeSchedule(n_tokens, k_min, k_max, schedules)
