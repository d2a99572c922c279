"""The plugin graph: one flashvlm::ResidualPrune node in place of the unrolled rounds.

In eager torch the module runs the reference loop (ALGORITHM.md step 11) per image; while
exporting it emits a single node of domain "flashvlm", op type "ResidualPrune", with the fields the
TensorRT ONNX parser passes to the plugin creator (k_div, step) and the ones it uses to find it
(plugin_version, plugin_namespace). The plugin takes int32 indices, so the node is wrapped in casts.

PluginRangePrune is the same for a selector that takes its budget per image (issue 23): one
flashvlm::ResidualPruneRange node with a third input, budget, and fields k_min, k_max, k_div_max,
step, max_rounds (csrc/residualPruneRangePlugin.h).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flashvlm_export.errors import UsageError
from flashvlm_export.plugin import (
    PLUGIN_DOMAIN,
    PLUGIN_NAME,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    RANGE_PLUGIN_NAME,
    RANGE_PLUGIN_VERSION,
)
from flashvlm_export.selector.reference import residual_prune
from flashvlm_export.selector.schedule import RangeSchedule, RoundSchedule
from flashvlm_export.selector.static import exporting


def node_attributes(k_div: int, step: int) -> dict:
    return dict(k_div=k_div, step=step, plugin_version=PLUGIN_VERSION, plugin_namespace=PLUGIN_NAMESPACE)


class PluginResidualPrune(nn.Module):
    """(gram (B, N, N), residual (B, |R0|)) -> kept residual (B, K_div) int64, as one plugin node."""

    def __init__(self, schedule: RoundSchedule):
        super().__init__()
        self.schedule = schedule

    def forward(self, gram: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        k_div, step = self.schedule.k_div, self.schedule.step
        if exporting():
            kept = torch.onnx.ops.symbolic(
                f"{PLUGIN_DOMAIN}::{PLUGIN_NAME}",
                (gram, residual.to(torch.int32)),
                node_attributes(k_div, step),
                dtype=torch.int32,
                shape=(residual.shape[0], k_div),
                version=1,
            )
            return kept.to(torch.int64)
        return torch.stack([residual_prune(g, r, k_div, step) for g, r in zip(gram, residual, strict=True)])


PAD_TOKEN = -1  # pads each residual list to the common width, and each kept row after its own K_div


def step_fields(schedule: RangeSchedule) -> tuple[int, int]:
    """(step, max_rounds; 0 for no cap) with which the plugin's rule, step_K = max(step, ceil((N - K) / max_rounds)),
    gives every budget's effective step in `schedule` (|R0| - K_div = N - K for every K < N).

    A RangeSchedule holds the effective steps only; this finds fields that reproduce all of them and checks it."""
    n = schedule.n_tokens
    steps = {s.budget: s.step for s in schedule.schedules}
    base = min(steps.values())

    def reproduces(cap: int) -> bool:
        return all(max(base, math.ceil((n - k) / cap) if cap else 0) == step for k, step in steps.items())

    if reproduces(0):
        return base, 0
    # the cap raised the smallest budget's step most (it has the most tokens to remove): it pins the cap
    d, e = n - schedule.k_min, steps[schedule.k_min]
    cap = max(1, math.ceil(d / e))
    while cap <= d and math.ceil(d / cap) >= e:
        if reproduces(cap):
            return base, cap
        cap += 1
    raise UsageError(f"no (step, max_rounds) reproduces the steps of budget range {schedule.k_min}..{schedule.k_max}")


def range_node_attributes(schedule: RangeSchedule) -> dict:
    step, max_rounds = step_fields(schedule)
    return dict(
        k_min=schedule.k_min,
        k_max=schedule.k_max,
        k_div_max=schedule.k_div_max,
        step=step,
        max_rounds=max_rounds,
        plugin_version=RANGE_PLUGIN_VERSION,
        plugin_namespace=PLUGIN_NAMESPACE,
    )


class PluginRangePrune(nn.Module):
    """(gram (B, N, N), residual (B, W), budget (B,)) -> kept residual (B, k_div_max) int64, as one plugin node.

    residual: each image's R0 = order[K_imp:] for its own budget, then -1 up to W = schedule.residual_size.
    Each row of the result is that image's K_div kept tokens in list order (what ResidualPrune at its budget
    returns), then -1. Eager torch runs the reference loop per image; a budget outside the range is a
    UsageError there, and an all -1 row from the plugin and its twins (csrc/residualPruneRangePlugin.h).
    """

    def __init__(self, schedule: RangeSchedule):
        super().__init__()
        if schedule.k_max >= schedule.n_tokens:
            raise UsageError(
                f"the prune plugin needs budgets below N = {schedule.n_tokens} (K = N keeps every token); "
                f"use a range up to {schedule.n_tokens - 1}"
            )
        self.schedule = schedule
        self.attributes = range_node_attributes(schedule)  # checked here, not first while exporting

    def forward(self, gram: torch.Tensor, residual: torch.Tensor, budget: torch.Tensor) -> torch.Tensor:
        k_div_max = self.schedule.k_div_max
        if exporting():
            kept = torch.onnx.ops.symbolic(
                f"{PLUGIN_DOMAIN}::{RANGE_PLUGIN_NAME}",
                (gram, residual.to(torch.int32), budget.to(torch.int32)),
                self.attributes,
                dtype=torch.int32,
                shape=(residual.shape[0], k_div_max),
                version=1,
            )
            return kept.to(torch.int64)
        rows = []
        for g, r, k in zip(gram, residual, budget.tolist(), strict=True):
            s = self.schedule.of(int(k))
            kept = residual_prune(g, r[: s.residual_size], s.k_div, s.step, s.n_rounds)
            rows.append(F.pad(kept, (0, k_div_max - s.k_div), value=PAD_TOKEN))
        return torch.stack(rows)
