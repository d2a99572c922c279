"""What a graph's metadata says about itself, and which weights `run` must rebuild to match it.

The weights field is read in one function, `weights_from_metadata`, so that a change of its
format touches one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from flashvlm_export.errors import UsageError
from flashvlm_export.export.graphs import ExportRequest, request_from_metadata


@dataclass(frozen=True)
class GraphWeights:
    """Where a graph's encoder and projector weights came from."""

    seed: int | None  # random weights: the seed of random_parts
    path: str | None  # a checkpoint directory

    @property
    def random(self) -> bool:
        return self.seed is not None

    def flag(self) -> str:
        return f"--random-weights --seed {self.seed}" if self.random else f"--model-path {self.path}"


def weights_from_metadata(value: str | None, source: str) -> GraphWeights:
    """Parse the graph's `weights` entry: "random:<seed>", a checkpoint path, or a JSON record."""
    if not value:
        raise UsageError(f"{source} records no weights; re-export it with flashvlm-export (a full graph, not --selector-only)")
    if value.startswith("{"):  # a typed record: {"kind": "random", "seed": 0} or {"kind": "checkpoint", "path": ...}
        record = json.loads(value)
        if record.get("kind") == "random" or "seed" in record and "path" not in record:
            return GraphWeights(int(record["seed"]), None)
        return GraphWeights(None, str(record["path"]))
    if value.startswith("random:"):
        try:
            return GraphWeights(int(value.split(":", 1)[1]), None)
        except ValueError:
            raise UsageError(f"{source} has unreadable weights metadata {value!r}; re-export it with flashvlm-export") from None
    return GraphWeights(None, value)


def choose_weights(
    graph: GraphWeights, model_path: str | None, random_weights: bool, seed: int | None, source: str
) -> GraphWeights:
    """The graph's own weights, or a one-line error when the user's flags name other ones."""
    if random_weights and model_path is not None:
        raise UsageError("--random-weights and --model-path exclude each other; pass one")
    fix = f"pass {graph.flag()} (the graph's own weights) or re-export the graph with the weights you want"
    if random_weights:
        if not graph.random:
            raise UsageError(f"{source} was exported from the checkpoint {graph.path}, not --random-weights; {fix}")
        if seed is not None and seed != graph.seed:
            raise UsageError(f"{source} was exported with --random-weights --seed {graph.seed}, not --seed {seed}; {fix}")
        return graph
    if seed is not None:
        raise UsageError(f"--seed {seed} applies to --random-weights only; drop it or add --random-weights")
    if model_path is not None:
        if graph.random:
            raise UsageError(
                f"{source} was exported with random weights (seed {graph.seed}), not --model-path {model_path}; {fix}"
            )
        if Path(model_path).expanduser().resolve() != Path(graph.path).expanduser().resolve():
            raise UsageError(f"{source} was exported from the checkpoint {graph.path}, not --model-path {model_path}; {fix}")
        return graph
    if not graph.random and not Path(graph.path).is_dir():
        raise UsageError(
            f"{source} was exported from the checkpoint {graph.path}, which is not on this machine; pass --model-path DIR"
        )
    return graph


@dataclass(frozen=True)
class GraphInfo:
    request: ExportRequest  # model spec, budget, T_max, batch, selector config, precision
    weights: GraphWeights
    source: str  # the graph or engine file, for messages

    @property
    def spec(self):
        return self.request.spec


def graph_info(meta: dict[str, str], source: str) -> GraphInfo:
    request = request_from_metadata(meta, source)
    if request.selector_only:
        raise UsageError(
            f"{source} is a selector-only graph; run needs the full graph (pixels in): export it without --selector-only"
        )
    return GraphInfo(request, weights_from_metadata(meta.get("weights"), source), source)
