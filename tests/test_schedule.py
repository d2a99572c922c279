"""The round schedule depends only on (N, K, step, max_rounds), and matches ALGORITHM.md step 11."""

import math

import pytest

from flashvlm_export.errors import UsageError
from flashvlm_export.selector import SelectorConfig, round_schedule


@pytest.mark.parametrize("budget, rounds", [(128, 56), (64, 64), (32, 68)])
def test_round_counts_match_the_contract_for_576_tokens(budget, rounds):
    assert round_schedule(576, budget).n_rounds == rounds  # the counts ALGORITHM.md states


@pytest.mark.parametrize("n, budget", [(576, 2), (576, 3), (576, 15), (576, 128), (576, 575), (2880, 640), (10, 4)])
def test_rounds_remove_exactly_down_to_k_div(n, budget):
    s = round_schedule(n, budget)
    assert s.k_imp == budget // 2 and s.k_div == budget - s.k_imp
    assert s.sizes[0] == n - s.k_imp if s.n_rounds else True
    assert sum(s.removals) == (n - s.k_imp) - s.k_div
    for size, r in zip(s.sizes, s.removals, strict=True):
        assert 1 <= r <= min(s.step, math.ceil(size / 2)) and size - r >= s.k_div


def test_max_rounds_raises_the_step_to_fit():
    capped = round_schedule(576, 128, SelectorConfig(max_rounds=10))
    assert capped.n_rounds <= 10 and capped.step == math.ceil((512 - 64) / 10)
    assert round_schedule(576, 128, SelectorConfig(max_rounds=1000)).step == 8  # a loose cap never lowers s


def test_budget_at_or_above_n_keeps_all_tokens_without_rounds():
    s = round_schedule(576, 576)
    assert s.keeps_all and s.n_rounds == 0


@pytest.mark.parametrize("budget", [1, 0, -3])
def test_budget_below_two_is_rejected(budget):
    with pytest.raises(UsageError, match="budget"):
        round_schedule(576, budget)
