"""ResidualPruneRange (issue 23): the plugin that takes its budget per image, through its C++ CPU twin,
its ONNX Runtime op and its ONNX node. The reference is PluginRangePrune in eager torch: the fixed-budget
step 11 (residual_prune) per image at that image's own schedule.

Nothing here runs the CUDA kernel or TensorRT: the twin runs the kernel's body (pruneImageRange).
"""

import dataclasses
import shutil

import numpy as np
import onnx
import pytest
import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import SELECTOR_INPUTS
from flashvlm_export.plugin.cpu import (
    STATUS_BAD_ARGUMENTS,
    STATUS_BUDGET_REJECTED,
    STATUS_TOKEN_OUT_OF_RANGE,
    count_rounds_cpu,
    residual_prune_cpu,
    run_range_twin,
)
from flashvlm_export.plugin.node import PAD_TOKEN, PluginRangePrune, range_node_attributes, step_fields
from flashvlm_export.plugin.ort_op import _run_range
from flashvlm_export.selector import SelectorConfig
from flashvlm_export.selector.reference import pruning_inputs
from flashvlm_export.selector.schedule import range_schedule

from conftest import corpus

needs_gxx = pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the kernel's CPU twin")
MIXED = [16, 64, 128, 256]  # one batch, four budgets (the example)
CONFIGS = {"default": SelectorConfig(), "max_rounds=40": SelectorConfig(max_rounds=40)}


def mixed_inputs(case, budgets, config):
    """Each image's Gram and its own R0 (the reference's partition at its budget), padded with -1 to one width."""
    schedule = range_schedule(576, 16, 256, config)
    f = [torch.from_numpy(case.feeds[name]) for name in SELECTOR_INPUTS]
    grams, rows = [], []
    for b, budget in enumerate(budgets):
        gram, residual = pruning_inputs(*(x[b : b + 1] for x in f), budget, config)
        grams.append(gram[0])
        rows.append(torch.nn.functional.pad(residual[0], (0, schedule.residual_size - residual.shape[1]), value=PAD_TOKEN))
    return schedule, torch.stack(grams), torch.stack(rows), torch.tensor(budgets)


def small_inputs(budgets, n=64, k_min=8, k_max=40, seed=0):
    """Seeded random unit features at a small N, a random partition order per image: for the error paths."""
    schedule = range_schedule(n, k_min, k_max)
    rng = np.random.default_rng(seed)
    grams, rows = [], []
    for budget in budgets:
        z = rng.standard_normal((n, 16)).astype(np.float32)
        z /= np.linalg.norm(z, axis=1, keepdims=True)
        residual = rng.permutation(n)[schedule.of(budget).k_imp :]
        grams.append(z @ z.T)
        rows.append(np.pad(residual, (0, schedule.residual_size - len(residual)), constant_values=PAD_TOKEN))
    return schedule, torch.from_numpy(np.stack(grams)), torch.from_numpy(np.stack(rows)), torch.tensor(budgets)


def twin(schedule, gram, residual, budget):
    attrs = range_node_attributes(schedule)
    fields = [attrs[name] for name in ("k_min", "k_max", "k_div_max", "step", "max_rounds")]
    return run_range_twin(gram.numpy(), residual.numpy(), budget.numpy(), *fields)


def mismatched_images(got: np.ndarray, expected: np.ndarray) -> list[int]:
    """The images whose kept row (tokens, order and padding) differs: the check every test below applies."""
    return [b for b in range(expected.shape[0]) if not np.array_equal(got[b], expected[b])]


@pytest.fixture(scope="module", params=list(CONFIGS))
def mixed_batches(request):
    """(config, [(schedule, gram, residual, budget, the reference's kept rows)] over every corpus case)."""
    config = CONFIGS[request.param]
    cases = corpus(batch=len(MIXED))[: 5 if request.param == "default" else 3]  # scene, random, ties, ...: for time
    batches = [mixed_inputs(case, MIXED, config) for case in cases]
    return config, [(*inputs, PluginRangePrune(inputs[0])(*inputs[1:]).numpy()) for inputs in batches]


@needs_gxx
def test_twin_equals_reference_per_image_on_mixed_budgets(mixed_batches):
    config, batches = mixed_batches
    for schedule, gram, residual, budget, expected in batches:
        status, got = twin(schedule, gram, residual, budget)
        assert status == 0 and mismatched_images(got, expected) == [], config


@needs_gxx
def test_twin_rows_are_each_budgets_own_k_div_then_padding(mixed_batches):
    _, batches = mixed_batches
    schedule, gram, residual, budget, expected = batches[0]
    _, got = twin(schedule, gram, residual, budget)
    assert got.shape == (len(MIXED), schedule.k_div_max)
    for row, k in zip(got, MIXED, strict=True):
        k_div = schedule.of(k).k_div
        assert (row[:k_div] >= 0).all() and (row[k_div:] == PAD_TOKEN).all(), k


@needs_gxx
def test_twin_row_equals_the_fixed_budget_plugin_at_that_images_budget(mixed_batches):
    """Each image stops at its own round count: its row is what ResidualPrune (one budget, its own twin) gives
    at that image's K, alone. (The reference rows assert their round counts: residual_prune(expected_rounds=).)"""
    config, batches = mixed_batches
    schedule, gram, residual, budget, _ = batches[0]
    _, got = twin(schedule, gram, residual, budget)
    for b, k in enumerate(MIXED):
        s = schedule.of(k)
        alone = residual_prune_cpu(gram[b : b + 1].numpy(), residual[b : b + 1, : s.residual_size].numpy(), s.k_div, s.step)
        assert np.array_equal(got[b, : s.k_div], alone[0]), (config, k, s.n_rounds)


def test_ort_op_equals_reference_per_image_on_mixed_budgets(mixed_batches):
    _, batches = mixed_batches
    for schedule, gram, residual, budget, expected in batches[:1]:
        got = _run_range(
            gram.numpy(), residual.numpy().astype(np.int32), budget.numpy().astype(np.int32), **range_node_attributes(schedule)
        )
        assert mismatched_images(got, expected) == []


def twin_rounds(schedule, residual_size: int, budget: int) -> int:
    """The rounds the twin runs for a list of `residual_size` told `budget`: its own K_div rule (budget - (N -
    |R0|)), the step its fields give (raised by max_rounds), and its own round counter (flashvlm_count_rounds)."""
    step, cap = step_fields(schedule)
    k_div = budget - (schedule.n_tokens - residual_size)
    step = max(step, -(-(residual_size - k_div) // cap)) if cap else step
    return count_rounds_cpu(residual_size, k_div, step)


@needs_gxx
def test_planted_round_too_many_for_one_image_is_caught(mixed_batches):
    """The twin itself runs image 2 (K=128) one round late: told the highest budget below 128 whose schedule on
    image 2's own list is one round longer (127 by default: K_div 63, a 57th round of one token; 119 under
    max_rounds=40: 39 rounds of 12 instead of 38). The list is as
    long as the plugin accepts, so it cannot reject it; the check reports image 2 only."""
    config, batches = mixed_batches
    schedule, gram, residual, budget, expected = batches[0]
    size, rounds = schedule.of(128).residual_size, schedule.of(128).n_rounds
    assert twin_rounds(schedule, size, 128) == rounds  # the twin's own count is the reference's at the true budget
    late = next(k for k in range(127, schedule.k_min - 1, -1) if twin_rounds(schedule, size, k) == rounds + 1)
    wrong = budget.clone()
    wrong[2] = late
    status, got = twin(schedule, gram, residual, wrong)
    assert status == 0 and mismatched_images(got, expected) == [2], (config, late)


@needs_gxx
def test_planted_neighbours_budget_for_one_image_is_caught(mixed_batches):
    """Image 1's list was partitioned at K=64 but the plugin is told its neighbour's K=128. Its list (K_imp=32)
    can give K_div=96, so the plugin prunes to 96 tokens: no rejection, and the check reports image 1 only."""
    _, batches = mixed_batches
    schedule, gram, residual, budget, expected = batches[0]
    wrong = budget.clone()
    wrong[1] = budget[2]
    status, got = twin(schedule, gram, residual, wrong)
    assert status == 0 and mismatched_images(got, expected) == [1]
    assert (got[1, :96] >= 0).all() and (got[1, 96:] == PAD_TOKEN).all()


@needs_gxx
def test_budget_its_list_cannot_give_gives_an_all_padding_row(mixed_batches):
    """Image 3's list was partitioned at K=256 (|R0| = 448) and the plugin is told K=16: K_div = 16 - 128 < 1."""
    _, batches = mixed_batches
    schedule, gram, residual, budget, expected = batches[0]
    wrong = budget.clone()
    wrong[3] = 16
    status, got = twin(schedule, gram, residual, wrong)
    assert status == STATUS_BUDGET_REJECTED and (got[3] == PAD_TOKEN).all()
    assert mismatched_images(got, expected) == [3]


@needs_gxx
def test_planted_neighbouring_budget_with_the_same_list_length_is_caught():
    """K=33 and K=32 give the same K_imp (so the same list length): the twin cannot reject K=32, it prunes
    one token more, and the comparison with the reference at K=33 reports that image."""
    schedule, gram, residual, budget = small_inputs([33, 20])
    wrong = torch.tensor([32, 20])
    status, got = twin(schedule, gram, residual, wrong)
    expected = PluginRangePrune(schedule)(gram, residual, budget).numpy()
    assert status == 0 and mismatched_images(got, expected) == [0]


@needs_gxx
def test_budget_outside_the_range_gives_an_all_padding_row():
    schedule, gram, residual, budget = small_inputs([8, 30])
    expected = PluginRangePrune(schedule)(gram, residual, budget).numpy()
    for outside in (7, 41, 0, -3):
        status, got = twin(schedule, gram, residual, torch.tensor([outside, 30]))
        assert status == STATUS_BUDGET_REJECTED and (got[0] == PAD_TOKEN).all(), outside
        assert np.array_equal(got[1], expected[1])
        ort = _run_range(gram.numpy(), residual.numpy(), np.array([outside, 30]), **range_node_attributes(schedule))
        assert np.array_equal(ort, got), outside  # the ONNX Runtime op does what the plugin does
    with pytest.raises(UsageError, match="budget 41 is outside the selector's range 8..40"):
        PluginRangePrune(schedule)(gram, residual, torch.tensor([41, 30]))


@needs_gxx
@pytest.mark.parametrize("plant", ["id after the padding", "id = N", "id = -2"])
def test_malformed_list_gives_an_all_padding_row(plant):
    schedule, gram, residual, budget = small_inputs([8, 30])
    bad = residual.clone()
    size = schedule.of(30).residual_size
    bad[1, {"id after the padding": size + 3, "id = N": 5, "id = -2": 5}[plant]] = {"id = N": 64, "id = -2": -2}.get(plant, 7)
    status, got = twin(schedule, gram, bad, budget)
    assert status == STATUS_TOKEN_OUT_OF_RANGE and (got[1] == PAD_TOKEN).all()
    assert np.array_equal(got[0], PluginRangePrune(schedule)(gram, residual, budget).numpy()[0])
    ort = _run_range(gram.numpy(), bad.numpy(), budget.numpy(), **range_node_attributes(schedule))
    assert np.array_equal(ort, got)


@needs_gxx
def test_twin_refuses_fields_the_plugin_refuses():
    gram, residual, budget = np.ones((1, 40, 40), np.float32), np.arange(30, dtype=np.int32)[None], np.array([20])
    assert run_range_twin(gram, residual, budget, 2, 39, 20, 8, 0)[0] == 0
    for fields in [
        (2, 40, 20, 8, 0),
        (1, 39, 20, 8, 0),
        (30, 20, 20, 8, 0),
        (2, 39, 31, 8, 0),
        (2, 39, 20, 0, 0),
        (2, 39, 20, 8, -1),
    ]:
        assert run_range_twin(gram, residual, budget, *fields)[0] == STATUS_BAD_ARGUMENTS, fields


@pytest.mark.parametrize(
    "config",
    [SelectorConfig(), SelectorConfig(max_rounds=40), SelectorConfig(max_rounds=10), SelectorConfig(step=3, max_rounds=7)],
)
def test_step_fields_reproduce_every_budgets_step(config):
    schedule = range_schedule(576, 16, 256, config)
    step, cap = step_fields(schedule)
    for s in schedule.schedules:
        assert max(step, -(-(576 - s.budget) // cap) if cap else 0) == s.step, s.budget


def test_step_fields_refuse_steps_no_fields_reproduce():
    schedule = range_schedule(576, 16, 32)
    planted = list(schedule.schedules)
    planted[5] = dataclasses.replace(planted[5], step=planted[5].step + 3)  # one budget's step off: no rule gives it
    with pytest.raises(UsageError, match="no \\(step, max_rounds\\) reproduces the steps of budget range 16..32"):
        step_fields(dataclasses.replace(schedule, schedules=tuple(planted)))


def test_plugin_module_refuses_a_range_reaching_n():
    with pytest.raises(UsageError, match="needs budgets below N = 576 .* use a range up to 575"):
        PluginRangePrune(range_schedule(576, 16, 576))


class _Prune(torch.nn.Module):
    def __init__(self, schedule):
        super().__init__()
        self.prune = PluginRangePrune(schedule)

    def forward(self, gram, residual, budget):
        return self.prune(gram, residual, budget)


@pytest.fixture(scope="module")
def range_node_graph(tmp_path_factory):
    schedule = range_schedule(576, 16, 256)
    case = corpus(batch=len(MIXED))[0]
    _, gram, residual, budget = mixed_inputs(case, MIXED, SelectorConfig())
    path = tmp_path_factory.mktemp("range_plugin") / "range_prune.onnx"
    torch.onnx.export(
        _Prune(schedule), (gram, residual, budget), str(path), input_names=["gram", "residual", "budget"],
        output_names=["kept"], dynamo=True, external_data=False,
    )  # fmt: skip
    return path, schedule


def test_exported_node_is_one_residual_prune_range_with_parser_attributes(range_node_graph):
    path, schedule = range_node_graph
    model = onnx.load(str(path))
    nodes = [n for n in model.graph.node if n.domain == "flashvlm"]
    assert [n.op_type for n in nodes] == ["ResidualPruneRange"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes[0].attribute}
    assert attrs == {
        "k_min": 16, "k_max": 256, "k_div_max": schedule.k_div_max, "step": 8, "max_rounds": 0,
        "plugin_version": b"1", "plugin_namespace": b"flashvlm",
    }  # fmt: skip
    assert len(nodes[0].input) == 3


def test_exported_node_runs_mixed_budgets_in_onnxruntime(range_node_graph):
    import onnxruntime as ort

    from flashvlm_export.plugin.ort_op import session_options

    path, schedule = range_node_graph
    session = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
    _, gram, residual, budget = mixed_inputs(corpus(batch=len(MIXED))[1], MIXED, SelectorConfig())  # not the export's
    (got,) = session.run(None, {"gram": gram.numpy(), "residual": residual.numpy(), "budget": budget.numpy()})
    expected = PluginRangePrune(schedule)(gram, residual, budget).numpy()
    assert got.dtype == np.int64 and mismatched_images(got, expected) == []
