"""What gets exported: the full pipeline, the selector core, or a split export's encoder, declared from a request.

A graph's metadata holds everything needed to rebuild its reference (model, budget, T_max, batch,
every selector hyperparameter, where the weights came from), so parity needs only the file.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import GraphInterface, graph_interface
from flashvlm_export.export.onnx_export import (
    DEFAULT_EXPORTER,
    DEFAULT_OPSET,
    GraphIO,
    export_estimate_s,
    export_onnx,
    full_metadata,
    parameter_bytes,
)
from flashvlm_export.models.spec import ModelSpec, get_spec
from flashvlm_export.models.vision import FlashVLMPipeline, SelectorWithEmbeds, VisionEncoder
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.schedule import check_budget_range, round_schedule
from flashvlm_export.selector.static import StaticSelector

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def example_inputs(interface: GraphInterface, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded tensors in the interface's shapes and dtypes (masks: the first half of the rows is text)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in interface.inputs:
        if spec.dtype is np.bool_:
            mask = torch.zeros(spec.shape, dtype=torch.bool)
            mask[..., : max(1, spec.shape[-1] // 2)] = True
            tensors.append(mask)
        else:
            tensors.append(torch.randn(spec.shape, generator=gen))
    return tuple(tensors)


def encoder_module(parts, precision: str) -> VisionEncoder:
    """The model's vision tower and projector; fp16/bf16 as copies behind casts (the fp32 parts stay for the reference)."""
    if parts is None:
        raise UsageError("the encoder needs the model's weights: pass --random-weights or --model-path")
    vision, projector = parts.vision_features(), parts.projector
    dtype = PRECISIONS[precision]
    if dtype != torch.float32:
        vision, projector = copy.deepcopy(vision).to(dtype), copy.deepcopy(projector).to(dtype)
    return VisionEncoder(vision, projector, dtype)


class _Traced:
    """What every request traces: example inputs and the names, from its interface()."""

    def interface(self) -> GraphInterface:
        raise NotImplementedError

    def example_inputs(self, seed: int = 0) -> tuple[torch.Tensor, ...]:
        return example_inputs(self.interface(), seed)

    def graph_io(self) -> GraphIO:
        i = self.interface()
        return GraphIO(i.input_names, i.output_names, example_inputs(i), i.verification_names)


@dataclass(frozen=True, kw_only=True)
class EncoderRequest(_Traced):
    """The encoder graph of a split export: pixel_values -> X, a, P(X) (fp32 outputs at any precision)."""

    spec: ModelSpec
    batch: int
    precision: str = "fp32"
    kind = "encoder"
    selector_only = False
    plugin = False

    @property
    def tokens(self) -> int:
        return self.spec.n_tokens

    def interface(self) -> GraphInterface:
        s = self.spec
        return graph_interface(
            self.kind, self.batch, s.n_tokens, s.n_tokens, s.t_max, s.vision_hidden, s.text_hidden, s.image_size
        )

    def module(self, parts=None, verification: bool = False) -> torch.nn.Module:
        return encoder_module(parts, self.precision)

    def metadata(self, weights: str | None) -> dict[str, str]:
        s = self.spec
        values = dict(
            graph=self.kind,
            model=s.name,
            batch=self.batch,
            n_tokens=s.n_tokens,
            image_size=s.image_size,
            vision_hidden=s.vision_hidden,
            text_hidden=s.text_hidden,
            precision=self.precision,
        )
        if weights is not None:
            values["weights"] = weights
        return {key: str(value) for key, value in values.items()}


@dataclass(frozen=True, kw_only=True)
class ExportRequest(_Traced):
    spec: ModelSpec
    budget: int  # K
    t_max: int  # padded text rows
    batch: int  # static batch B
    config: SelectorConfig
    selector_only: bool
    n_tokens: int | None = None  # selector-only graphs may override the model's N (own encoder, video)
    plugin: bool = False  # the pruning rounds as one flashvlm::ResidualPrune node
    precision: str = "fp32"  # encoder + projector precision; the selector is always fp32

    @property
    def tokens(self) -> int:
        return self.spec.n_tokens if self.n_tokens is None else self.n_tokens

    @property
    def kind(self) -> str:
        return "selector" if self.selector_only else "full"

    def selector(self, verification: bool = False) -> StaticSelector:
        selector = StaticSelector(self.tokens, self.budget, self.config, verification=verification)
        if self.plugin:
            from flashvlm_export.plugin.node import PluginResidualPrune

            selector.prune = PluginResidualPrune(selector.schedule)
        return selector

    def interface(self) -> GraphInterface:
        s = self.spec
        return graph_interface(
            self.kind, self.batch, self.tokens, self.budget, self.t_max, s.vision_hidden, s.text_hidden, s.image_size
        )

    def module(self, parts=None, verification: bool = False) -> torch.nn.Module:
        """The static module; with verification=True it also returns the interface's verification outputs."""
        selector = SelectorWithEmbeds(self.selector(verification))
        if self.selector_only:
            return selector
        if parts is None:
            raise UsageError("the full graph needs the model's weights: pass --random-weights or --model-path")
        return FlashVLMPipeline(encoder_module(parts, self.precision), selector, verification)

    def metadata(self, weights: str | None) -> dict[str, str]:
        schedule = round_schedule(self.tokens, self.budget, self.config)
        values = dict(
            graph=self.kind,
            model=self.spec.name,
            budget=self.budget,
            t_max=self.t_max,
            batch=self.batch,
            n_tokens=self.tokens,
            image_size=self.spec.image_size,
            vision_hidden=self.spec.vision_hidden,
            text_hidden=self.spec.text_hidden,
            k_imp=schedule.k_imp,
            k_div=schedule.k_div,
            step=schedule.step,
            n_rounds=schedule.n_rounds,
            selector_config=json.dumps(self.config.to_dict(), sort_keys=True),
            plugin=int(self.plugin),
            precision=self.precision,
        )
        if self.plugin:
            from flashvlm_export.plugin import PLUGIN_ID

            values["plugin_version"] = PLUGIN_ID
        if weights is not None:
            values["weights"] = weights
        return {key: str(value) for key, value in values.items()}


def request_from_metadata(meta: dict[str, str], source: str) -> ExportRequest:
    """The request a full or selector graph was exported from, rebuilt from its metadata; malformed metadata is a
    one-line error, and so is a split's encoder graph (its manifest describes it)."""
    if meta.get("graph") == "encoder":
        raise UsageError(f"{source} is the encoder graph of a split export; pass its manifest instead (--manifest DIR/manifest.json)")
    fix = "re-export the graph with flashvlm-export"
    key = "?"

    def field(name: str) -> str:
        nonlocal key
        key = name
        value = meta[name]
        if not isinstance(value, str):
            raise TypeError(f"{type(value).__name__}, not a string")
        return value

    def whole(name: str, low: int = 1) -> int:
        value = int(field(name))
        if value < low:
            raise ValueError(f"{value} < {low}")
        return value

    try:
        graph = field("graph")
        if graph not in ("selector", "full"):
            raise ValueError(f"{graph!r} is neither 'selector' nor 'full'")
        spec = get_spec(field("model"))
        budget, t_max, batch, n_tokens = whole("budget"), whole("t_max"), whole("batch"), whole("n_tokens", 2)
        key = "budget"
        check_budget_range(budget, n_tokens, where=f" for n_tokens {n_tokens}")
        key = "plugin"
        plugin = meta.get("plugin", "0")
        if plugin not in ("0", "1"):
            raise ValueError(f"{plugin!r} is neither '0' nor '1'")
        key = "precision"
        precision = meta.get("precision", "fp32")
        if precision not in PRECISIONS:
            raise ValueError(f"{precision!r} is not one of {', '.join(PRECISIONS)}")
        config = SelectorConfig.from_dict(json.loads(field("selector_config")))
    except KeyError as exc:
        raise UsageError(f"{source} lacks flashvlm metadata {exc}; {fix}") from None
    except (ValueError, TypeError, UsageError) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UsageError(f"{source} has malformed flashvlm metadata {key!r} ({reason}); {fix}") from None
    return ExportRequest(
        spec=spec,
        budget=budget,
        t_max=t_max,
        batch=batch,
        config=config,
        selector_only=graph == "selector",
        n_tokens=n_tokens,
        plugin=plugin == "1",
        precision=precision,
    )


def export_graph(
    request: ExportRequest | EncoderRequest,
    path: Path,
    parts=None,
    weights: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    *,
    overwrite: bool = False,
    module: torch.nn.Module | None = None,
) -> Path:
    """Export the request's graph to `path` (+ sidecar): traced with its verification outputs, shipped without.

    `module` is request.module(parts, verification=True) when the caller built it already.
    """
    module = module if module is not None else request.module(parts, verification=True)
    return export_onnx(module, request.graph_io(), path, request.metadata(weights), opset, exporter, overwrite=overwrite)


def export_logged(
    request: ExportRequest | EncoderRequest,
    path: Path,
    parts=None,
    weights: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = DEFAULT_EXPORTER,
    *,
    overwrite: bool = False,
    log=print,
    staged: bool = False,
) -> dict[str, str]:
    """export_graph with an opening estimate, a progress bar and a closing line; returns the graph's metadata.

    staged=True: `path` is in a staging folder and is placed later (a split): the closing line says
    "staged", and the caller announces "saved as" once the file is in place.
    """
    from flashvlm_export.artifacts import StepTimer, artifact_size, human_size
    from flashvlm_export.progress import plural, progress
    from flashvlm_export.selector.schedule import round_schedule

    module = request.module(parts, verification=True)
    if request.kind == "encoder":
        rounds, what = 0, f"the encoder graph ({request.precision})"
    else:
        n_rounds = round_schedule(request.tokens, request.budget, request.config).n_rounds
        rounds = 1 if request.plugin else n_rounds  # the plugin's rounds export as one node
        inside = " in one plugin node" if request.plugin else ""
        what = f"the {request.kind} graph, K={request.budget} ({plural(n_rounds, 'pruning round')}{inside})"
    weight_bytes = parameter_bytes(module)
    estimate = export_estimate_s(rounds, weight_bytes, exporter)
    faster, hint = export_estimate_s(rounds, weight_bytes, "torchscript"), ""
    if exporter == "dynamo" and not request.plugin and estimate > 60 and estimate > 3 * faster:
        hint = f"--exporter torchscript writes the same graph in ~{faster:.0f}s"
    timer = StepTimer("ONNX", log)
    with progress(f"ONNX: exporting {what} with {exporter}", estimate, log=log, hint=hint):
        export_graph(request, path, parts, weights, opset, exporter, overwrite=overwrite, module=module)
    shape = f"B={request.batch}" if request.kind == "encoder" else f"K={request.budget}, B={request.batch}, T_max={request.t_max}"
    where = "staged, placed with the rest of the split" if staged else f"saved as '{path}'"
    log(f"ONNX: export success ({request.kind} graph, {shape}) {timer.elapsed:.1f}s, {where} ({human_size(artifact_size(path))})")
    return full_metadata(request.metadata(weights), opset)
