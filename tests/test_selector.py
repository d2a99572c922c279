"""Reference and static selector: same indices, tie rules, text masks, batches, edge cases."""

import numpy as np
import pytest
import torch

from flashvlm_export.parity.compare import ARITHMETIC_BOUNDS, aligned_fused_scores, max_relative_error
from flashvlm_export.selector import SelectorConfig, StaticSelector, reference_select
from flashvlm_export.selector.ops import lerp, quantile_position
from flashvlm_export.selector.reference import decide, fused_scores, text_relevance
from flashvlm_export.selector.static import StaticScores, running_count, stable_descending_order

from conftest import corpus, selector_inputs


def assert_decisions_and_bounds(selector, x, a, p, text, mask, budget, config=SelectorConfig()):
    """Layers 1 and 2 for the static torch selector against the reference, image by image.

    Layer 1 is exact on every CPU: decide() replays the static module's own F and G with the same
    comparisons. The indices themselves are not compared: the batched Gram and the reference's
    per-image Gram may round differently on another CPU (ALGORITHM.md "Parity").
    """
    selector.verification = True
    indices, relevance, sharpened, fused, gram = selector(x, a, p, text, mask)
    schedule = selector.schedule
    for b in range(x.shape[0]):
        assert torch.equal(decide(fused[b], gram[b], schedule), indices[b])  # layer 1, exact
        words = text[b][mask[b]]
        _, trace = reference_select(x[b], a[b], p[b], words, budget, config, trace=True)
        assert max_relative_error(gram[b].numpy(), trace.gram.numpy()) <= ARITHMETIC_BOUNDS["gram"]
        if len(words):
            want = text_relevance(p[b], words, config).numpy()
            assert max_relative_error(relevance[b].numpy(), want) <= ARITHMETIC_BOUNDS["text_relevance"]
            assert (
                max_relative_error(fused[b].numpy(), aligned_fused_scores(sharpened[b].numpy(), a[b].numpy(), True, config))
                <= 1e-5
            )
        else:
            assert max_relative_error(fused[b].numpy(), trace.fused_scores.numpy()) <= 1e-5


@pytest.mark.parametrize("budget", [32, 64, 128, 192])
def test_static_torch_passes_layers_1_and_2_at_576_tokens(budget):
    for seed in range(3):
        x, a, p, text, mask = selector_inputs(batch=2, seed=seed)
        assert_decisions_and_bounds(StaticSelector(576, budget), x, a, p, text, mask, budget)


def test_static_torch_passes_layers_1_and_2_at_2880_tokens():
    x, a, p, text, mask = selector_inputs(batch=1, n=2880, seed=1)
    for budget in (160, 640):
        assert_decisions_and_bounds(StaticSelector(2880, budget), x, a, p, text, mask, budget)


@pytest.mark.parametrize("gate", ["llava", "norm"])
def test_static_torch_passes_layers_1_and_2_on_the_corpus(gate):
    config = SelectorConfig(gate=gate)
    for case in corpus(batch=2):
        f = {k: torch.from_numpy(v) for k, v in case.feeds.items()}
        args = (f["vision_features"], f["cls_attention"], f["projected_features"], f["text_embeds"], f["text_mask"])
        assert_decisions_and_bounds(StaticSelector(576, 64, config), *args, 64, config)


@pytest.mark.parametrize("threads", [1, 2])
def test_layer_1_holds_whatever_the_batch_and_thread_count(threads):
    """GEMM blocking changes with the batch and the thread count; the decisions on each run's own F and G do not."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, a, p, text, mask = selector_inputs(batch=2, seed=4)
        assert_decisions_and_bounds(StaticSelector(576, 64), x, a, p, text, mask, 64)
        assert_decisions_and_bounds(StaticSelector(576, 64), x[:1], a[:1], p[:1], text[:1], mask[:1], 64)
    finally:
        torch.set_num_threads(previous)


def test_indices_are_ascending_unique_and_k_long():
    x, a, p, text, mask = selector_inputs()
    out = StaticSelector(576, 100)(x, a, p, text, mask)
    assert out.dtype == torch.int64 and out.shape == (2, 100)
    for row in out:
        assert torch.all(row[1:] > row[:-1])


def test_batch_images_are_selected_independently_with_their_own_text():
    x, a, p, text, mask = selector_inputs(batch=2, lengths=[16, 5])
    both = StaticSelector(576, 64)(x, a, p, text, mask)
    for b in range(2):  # each image of the batch passes layers 1 and 2 against the reference on its own text
        assert_decisions_and_bounds(
            StaticSelector(576, 64), x[b : b + 1], a[b : b + 1], p[b : b + 1], text[b : b + 1], mask[b : b + 1], 64
        )
    swapped = StaticSelector(576, 64)(x, a, p, text.flip(0), mask.flip(0))
    assert not torch.equal(both, swapped)  # the text changes the choice


def test_empty_text_ranks_by_saliency_alone():
    x, a, p, text, mask = selector_inputs(batch=1)
    no_text = torch.zeros_like(mask)
    fused = StaticScores(576, SelectorConfig())(a, p, text, no_text)[0][0]
    saliency_order = torch.sort(a[0], descending=True, stable=True).indices
    assert torch.equal(torch.sort(fused, descending=True, stable=True).indices, saliency_order)
    _, trace = reference_select(x[0], a[0], p[0], text[0][:0], 128, trace=True)
    assert torch.equal(trace.important, saliency_order[:64])
    assert_decisions_and_bounds(StaticSelector(576, 128), x, a, p, text, no_text, 128)


def test_padding_rows_do_not_change_the_result():
    x, a, p, text, mask = selector_inputs(batch=1, t_max=16, lengths=[6])
    garbage = text.clone()
    garbage[:, 6:] = 1e4
    zeros = text.clone()
    zeros[:, 6:] = 0
    selector = StaticSelector(576, 64, verification=True)
    # exact by construction: masked rows are zeroed before any arithmetic, so both runs see the same numbers
    with_garbage, with_zeros = selector(x, a, p, garbage, mask), selector(x, a, p, zeros, mask)
    assert all(torch.equal(g, z) for g, z in zip(with_garbage, with_zeros, strict=True))
    assert_decisions_and_bounds(StaticSelector(576, 64), x, a, p, garbage, mask, 64)  # against the unpadded reference
    longer = (torch.cat([text, text], 1), torch.cat([mask, torch.zeros_like(mask)], 1))
    assert_decisions_and_bounds(StaticSelector(576, 64), x, a, p, *longer, 64)  # a larger T_max is only more padding


def test_ties_go_to_the_lower_token_index():
    n, budget = 576, 64
    x = torch.zeros(1, n, 8)
    x[0, :, 0] = 1.0  # every feature identical: every pruning score ties
    a = torch.full((1, n), 0.3)  # constant saliency: every fused score ties
    text, mask = torch.zeros(1, 4, 8), torch.zeros(1, 4, dtype=torch.bool)
    out = StaticSelector(n, budget)(x, a, x.clone(), text, mask)[0]
    expected_important = torch.arange(32)
    _, trace = reference_select(x[0], a[0], x[0], text[0][:0], budget, trace=True)
    assert torch.equal(trace.important, expected_important)  # lower index wins the partition
    # exact on every CPU: identical one-hot features give G = 1 and a constant a gives one F, with no rounding
    assert torch.equal(out, reference_select(x[0], a[0], x[0], text[0][:0], budget))
    # with all m equal, each round drops the first r of A in list order: replay that by hand
    residual = list(range(32, n))
    for r in StaticSelector(n, budget).schedule.removals:
        a_side, b_side = residual[0::2], residual[1::2]
        residual = a_side[r:] + b_side
    assert out.tolist() == sorted(list(range(32)) + residual)


def test_stable_descending_order_breaks_ties_by_position():
    x = torch.tensor([[0.5, 0.9, 0.5, 0.9, 0.1, 0.5]])
    assert stable_descending_order(x).tolist() == [[1, 3, 0, 2, 5, 4]]


def test_running_count_is_cumsum_exactly_at_every_block_layout():
    """The stable order's run count without CumSum (issue 31 item 19) equals torch.cumsum in float64 bit for bit: the
    sums are integers below 2**24, exact in float32 in any order. Every n up to 150 (full, partial and single blocks)
    and the graph sizes around 576 and 2880; all-ones rows reach the largest counts."""
    gen = torch.Generator().manual_seed(0)
    for n in [*range(1, 151), 575, 576, 577, 2880, 3840]:
        flags = (torch.rand(3, n, generator=gen) < torch.tensor([[0.1], [0.6], [1.0]])).float()
        assert torch.equal(running_count(flags), torch.cumsum(flags.double(), dim=-1).float()), n


@pytest.mark.parametrize("n", [1, 2, 7, 284, 576, 3840])
def test_stable_descending_order_is_a_stable_sort_on_inputs_full_of_ties(n):
    """Exact equality with torch's stable sort: the order is decided by comparisons of the same floats and a sort of
    distinct integers, so no rounding enters; ties (few distinct values, signed zeros, float32's lowest) are where a
    TopK's own tie rule would show."""
    gen = torch.Generator().manual_seed(n)
    for trial in range(6):
        if trial % 3 == 0:
            x = torch.randint(0, 4, (3, n), generator=gen).float()
        elif trial % 3 == 1:
            x = torch.randn(3, n, generator=gen)
        else:
            x = torch.where(
                torch.rand(3, n, generator=gen) < 0.5, torch.finfo(torch.float32).min, torch.randn(3, n, generator=gen)
            )
            x[:, ::7] = -0.0
            x[:, 1::7] = 0.0
        want = torch.sort(x, dim=-1, descending=True, stable=True).indices
        assert torch.equal(stable_descending_order(x), want), (n, trial)


@pytest.mark.parametrize("n", [576, 2880, 577, 10, 33])
def test_static_top_p_gate_keeps_the_same_tokens_as_torch_quantile(n):
    gen = torch.Generator().manual_seed(n)
    lower, weight = quantile_position(n, 0.995)
    for trial in range(50):
        q = torch.rand(n, generator=gen) ** 3
        if trial % 2:  # near-equal neighbours, where rounding could matter
            q = 0.5 + torch.round(q * 64) * 2**-23
        ascending = torch.sort(q).values
        theta = lerp(ascending[lower], ascending[lower + 1], weight)
        assert torch.equal(q >= theta, q >= torch.quantile(q, 0.995))


def test_static_quantile_is_bitwise_torch_quantile_at_576_tokens():
    lower, weight = quantile_position(576, 0.995)
    assert weight == 0.125  # a power of two: the product is exact, no fused multiply-add question
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        q = torch.rand(576, generator=gen) ** 3
        ascending = torch.sort(q).values
        assert lerp(ascending[lower], ascending[lower + 1], weight).item() == torch.quantile(q, 0.995).item()


def test_budget_at_n_keeps_every_token():
    x, a, p, text, mask = selector_inputs(batch=2)
    assert torch.equal(StaticSelector(576, 576)(x, a, p, text, mask), torch.arange(576).expand(2, 576))
    assert torch.equal(reference_select(x[0], a[0], p[0], text[0], 576), torch.arange(576))


def test_query_aligned_region_is_kept_by_the_text_score():
    case = next(c for c in corpus() if c.name.startswith("scene"))
    f = {k: torch.from_numpy(v[0]) for k, v in case.feeds.items()}
    text = f["text_embeds"][f["text_mask"]]
    with_text = fused_scores(f["cls_attention"], f["projected_features"], text, SelectorConfig())
    without = fused_scores(f["cls_attention"], f["projected_features"], text[:0], SelectorConfig())
    assert not torch.equal(torch.argsort(with_text, descending=True)[:8], torch.argsort(without, descending=True)[:8])
    assert np.isfinite(with_text.numpy()).all()
