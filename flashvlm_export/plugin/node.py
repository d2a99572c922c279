"""The plugin graph: one flashvlm::ResidualPrune node in place of the unrolled rounds.

In eager torch the module runs the reference loop (ALGORITHM.md step 11) per image; while
exporting it emits a single node of domain "flashvlm", op type "ResidualPrune", with the fields the
TensorRT ONNX parser passes to the plugin creator (k_div, step) and the ones it uses to find it
(plugin_version, plugin_namespace). The plugin takes int32 indices, so the node is wrapped in casts.
"""

from __future__ import annotations

import torch
from torch import nn

from flashvlm_export.plugin import PLUGIN_DOMAIN, PLUGIN_NAME, PLUGIN_NAMESPACE, PLUGIN_VERSION
from flashvlm_export.selector.reference import residual_prune
from flashvlm_export.selector.schedule import RoundSchedule
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
