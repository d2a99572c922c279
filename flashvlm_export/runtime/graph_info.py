"""What a graph's metadata says about itself; the weights it records are read by models/llava.py."""

from __future__ import annotations

from dataclasses import dataclass

from flashvlm_export.errors import UsageError, arg
from flashvlm_export.export.graphs import ExportRequest, request_from_metadata
from flashvlm_export.models.weights import WeightsSource, recorded_weights


@dataclass(frozen=True)
class GraphInfo:
    request: ExportRequest  # model spec, budget, T_max, batch, selector config, precision
    weights: WeightsSource  # as the graph records them (models/llava.py reads the tag)
    source: str  # the graph or engine file, for messages

    @property
    def spec(self):
        return self.request.spec


def graph_info(meta: dict[str, str], source: str) -> GraphInfo:
    request = request_from_metadata(meta, source)
    if request.selector_only:
        raise UsageError(
            f"{source} is a selector-only graph; run needs the full graph (pixels in): export it without {arg('selector_only')}"
        )
    return GraphInfo(request, recorded_weights(meta.get("weights"), source), source)
