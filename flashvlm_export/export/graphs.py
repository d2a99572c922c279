"""What gets exported: the full pipeline, the selector core, or a split export's encoder, declared from a request.

A graph's metadata holds everything needed to rebuild its reference (model, budget, T_max, batch,
every selector hyperparameter, where the weights came from), so parity needs only the file;
export/metadata.py writes and reads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from flashvlm_export.errors import UsageError
from flashvlm_export.export.interface import GraphInterface, graph_interface
from flashvlm_export.export.metadata import encoder_metadata, request_fields, request_metadata, stamped
from flashvlm_export.export.onnx_export import GraphIO, export_hint, export_onnx, parameter_bytes
from flashvlm_export.export.options import DEFAULT_EXPORTER, DEFAULT_FPS, DEFAULT_OPSET, PRECISION_NAMES
from flashvlm_export.models.positions import clip_token_positions, second_per_grid, token_positions
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.models.vision import FlashVLMPipeline, SelectorWithEmbeds, VisionEncoder
from flashvlm_export.selector.clip import DEFAULT_RULE, ClipLayout, StaticClipSelector, check_clip_budget, clip_schedule
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.range import RangeSelector
from flashvlm_export.selector.schedule import RangeSchedule, RoundSchedule, range_schedule, round_schedule
from flashvlm_export.selector.static import StaticSelector

TORCH_DTYPES = dict(zip(PRECISION_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))
TRACED_DTYPES = {**TORCH_DTYPES, "int8": torch.float32, "fp8": torch.float32}  # quantized after export from fp32


def example_inputs(interface: GraphInterface, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Seeded tensors in the interface's shapes and dtypes (masks: the first half of the rows is text; a budget-range
    graph's budgets: zeros, which the graph clamps to KMIN)."""
    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in interface.inputs:
        if spec.dtype is np.bool_:
            mask = torch.zeros(spec.shape, dtype=torch.bool)
            mask[..., : max(1, spec.shape[-1] // 2)] = True
            tensors.append(mask)
        elif spec.dtype is np.int64:
            tensors.append(torch.zeros(spec.shape, dtype=torch.int64))
        else:
            tensors.append(torch.randn(spec.shape, generator=gen))
    return tuple(tensors)


def encoder_module(parts, precision: str, frames: int | None = None, spec: ModelSpec | None = None) -> VisionEncoder:
    """The family's encoder (pixels -> X, a, P(X)); fp16/bf16 as a copy behind casts (the fp32 parts stay for the reference).
    `frames`: the clip encoder over that many frames (pixels (B, F, 3, H, W) -> the clip's tokens). `spec`: the
    request's shape, where the weights were loaded once for several (a split of several shapes, --aspects)."""
    if parts is None:
        raise UsageError("the encoder needs the model's weights: pass --random-weights or --model-path")
    if spec is not None and parts.spec != spec:
        from dataclasses import replace

        parts = replace(parts, spec=spec)
    if frames is not None:
        return parts.clip_encoder(frames, TRACED_DTYPES[precision])
    return parts.encoder(TRACED_DTYPES[precision])


def clip_layout(spec: ModelSpec, frames: int | None, rule: str) -> ClipLayout | None:
    """The clip's temporal groups of a video request (None for images)."""
    if frames is None:
        return None
    return ClipLayout(frames // spec.temporal_patch, spec.n_tokens, rule)


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
    frames: int | None = None  # a clip encoder: F frames -> the clip's G * N tokens
    calibration: object = None  # int8/fp8: the pictures it is calibrated on (export/quantize.py Calibration)
    kind = "encoder"
    selector_only = False
    plugin = False

    @property
    def tokens(self) -> int:
        clip = clip_layout(self.spec, self.frames, DEFAULT_RULE)
        return self.spec.n_tokens if clip is None else clip.tokens

    def interface(self) -> GraphInterface:
        s = self.spec
        return graph_interface(
            self.kind,
            self.batch,
            self.tokens,
            self.tokens,
            s.t_max,
            s.vision_hidden,
            s.text_hidden,
            s.image_shape,
            frames=self.frames,
            crops=s.crops,
            deepstack=s.deepstack_layers,
        )

    def module(self, parts=None, verification: bool = False) -> torch.nn.Module:
        return encoder_module(parts, self.precision, self.frames, self.spec)

    def metadata(self, weights: str | None) -> dict[str, str]:
        return encoder_metadata(self, weights)


@dataclass(frozen=True, kw_only=True)
class ExportRequest(_Traced):
    spec: ModelSpec
    budget: int  # K; with budget_min, the largest budget KMAX (the width of the padded outputs)
    t_max: int  # padded text rows
    batch: int  # static batch B
    config: SelectorConfig
    selector_only: bool
    n_tokens: int | None = None  # selector-only graphs may override the model's N (own encoder, video)
    plugin: bool = False  # the pruning rounds as one flashvlm::ResidualPrune node
    precision: str = "fp32"  # encoder + projector precision; the selector is always fp32
    budget_min: int | None = None  # set: a budget-range graph, KMIN = budget_min .. KMAX = budget, a budget per image
    frames: int | None = None  # set: a clip (video) graph of F frames, F/2 temporal groups (selector/clip.py)
    video_budget: str = DEFAULT_RULE  # a clip's budget rule: per-group or joint
    fps: float = DEFAULT_FPS  # the clip's sampling rate its positions assume (second_per_grid_t = 2 / fps)
    calibration: object = None  # int8/fp8 encoder: the pictures it is calibrated on (export/quantize.py Calibration)

    def __post_init__(self) -> None:
        if self.clip is not None:
            check_clip_budget(self.budget, self.clip, self.frames)

    @property
    def clip(self) -> ClipLayout | None:
        return clip_layout(self.spec, self.frames, self.video_budget)

    @property
    def second_per_grid_t(self) -> float:
        return second_per_grid(self.spec, self.fps)

    @property
    def tokens(self) -> int:
        if self.clip is not None:
            return self.clip.tokens
        return self.spec.n_tokens if self.n_tokens is None else self.n_tokens

    @property
    def ranged(self) -> bool:
        return self.budget_min is not None

    @property
    def crops(self) -> int:
        """Images per photo the selector sees (LLaVA-NeXT: the base image and the grid's crops), each at budget / crops."""
        return self.spec.crops

    @property
    def crop_budget(self) -> int:
        """K per crop (K itself without crops); export/requests.py checks that K divides evenly."""
        return self.budget // self.crops

    @property
    def budget_label(self) -> str:
        """ "128", or "16-256" for a budget range: file names and messages."""
        return f"{self.budget_min}-{self.budget}" if self.ranged else str(self.budget)

    def schedule_of(self, budget: int) -> RoundSchedule:
        """The rounds of one image's budget: the range's entry, or the fixed graph's own schedule (its budget only)."""
        if self.ranged:
            return self.schedule.of(budget)
        if budget != self.budget:
            raise ValueError(f"budget {budget} given to a graph of K={self.budget}")
        return self.schedule

    @property
    def kind(self) -> str:
        return "selector" if self.selector_only else "full"

    @cached_property
    def schedule(self) -> RoundSchedule | RangeSchedule:
        """The pruning rounds (N, K, step, max_rounds), every budget's for a range: computed once per request."""
        if self.ranged:
            return range_schedule(self.tokens, self.budget_min, self.budget, self.config)
        if self.clip is not None:
            return clip_schedule(self.clip, self.budget, self.config)
        return round_schedule(self.tokens // self.crops, self.crop_budget, self.config)  # one crop's (the image's)

    def selector(self, verification: bool = False) -> StaticSelector | RangeSelector | StaticClipSelector:
        if self.clip is not None:
            prune = None
            if self.plugin:
                from flashvlm_export.plugin.node import PluginResidualPrune

                prune = PluginResidualPrune(self.schedule)
            return StaticClipSelector(self.clip, self.budget, self.config, prune, verification, self.schedule)
        if self.ranged:
            selector = RangeSelector(
                self.tokens, self.budget_min, self.budget, self.config, verification=verification, schedule=self.schedule
            )
            if self.plugin:
                from flashvlm_export.plugin.node import PluginRangePrune  # the plugin helper's (branch bplugin)

                selector.prune = PluginRangePrune(selector.schedule)
            return selector
        n, k = self.tokens // self.crops, self.crop_budget
        selector = StaticSelector(n, k, self.config, verification=verification, schedule=self.schedule)
        if self.plugin:
            from flashvlm_export.plugin.node import PluginResidualPrune

            selector.prune = PluginResidualPrune(selector.schedule)
        if self.crops > 1:
            from flashvlm_export.selector.crops import CropSelector

            return CropSelector(selector, self.crops)
        return selector

    @property
    def positions(self) -> bool:
        """Whether the graph also returns the kept tokens' (t, h, w) positions: models placed by 3-axis rotary
        positions, at the model's own N (or a clip's)."""
        return self.spec.has_positions and (self.tokens == self.spec.n_tokens or self.clip is not None)

    @property
    def deepstack(self) -> int:
        """L: the DeepStack layers whose rows the graph takes and gathers (Qwen3-VL at the model's own N or a clip's)."""
        return self.spec.deepstack_layers if self.positions else 0

    def token_positions(self) -> torch.Tensor:
        """(N, 3) int64: each token's (t, h, w), an image's or a clip's (models/positions.py)."""
        if self.clip is not None:
            return clip_token_positions(self.spec, self.frames, self.second_per_grid_t)
        return token_positions(self.spec)

    def interface(self) -> GraphInterface:
        s = self.spec
        return graph_interface(
            self.kind,
            self.batch,
            self.tokens,
            self.budget,
            self.t_max,
            s.vision_hidden,
            s.text_hidden,
            s.image_shape,
            positions=self.positions,
            budget_min=self.budget_min,
            frames=self.frames,
            gram_width=None if self.clip is None else self.clip.gram_width,
            crops=s.crops,
            deepstack=self.deepstack,
        )

    def module(self, parts=None, verification: bool = False) -> torch.nn.Module:
        """The static module; with verification=True it also returns the interface's verification outputs."""
        table = self.token_positions() if self.positions else None
        selector = SelectorWithEmbeds(self.selector(verification), table, deepstack=bool(self.deepstack))
        if self.selector_only:
            return selector
        if parts is None:
            raise UsageError("the full graph needs the model's weights: pass --random-weights or --model-path")
        return FlashVLMPipeline(encoder_module(parts, self.precision, self.frames, self.spec), selector, verification)

    def metadata(self, weights: str | None) -> dict[str, str]:
        return request_metadata(self, weights)


def request_from_metadata(meta: dict[str, str], source: str) -> ExportRequest:
    """The request a full or selector graph was exported from, rebuilt from its metadata (export/metadata.py checks it)."""
    return ExportRequest(**request_fields(meta, source))


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
    metadata: dict[str, str] | None = None,
    calib_cache: Path | None = None,
    log=print,
) -> Path:
    """Export the request's graph to `path` (+ sidecar): traced with its verification outputs, shipped without.

    `module` is request.module(parts, verification=True) and `metadata` request.metadata(weights) when the caller
    built them already. An int8/fp8 encoder is quantized before the graph is placed (export/quantize.py), its
    calibration ranges cached at `calib_cache` (default: `<graph stem>.calib.json` beside `path`).
    """
    module = module if module is not None else request.module(parts, verification=True)
    metadata = metadata if metadata is not None else request.metadata(weights)
    finish = None
    if getattr(request, "calibration", None) is not None:
        from flashvlm_export.artifacts.naming import calib_cache_name
        from flashvlm_export.export.quantize import quantize_encoder

        cache = calib_cache or path.with_name(calib_cache_name(request))

        def finish(temp: Path) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            quantize_encoder(temp, request, weights, cache, overwrite, log=log)

    return export_onnx(module, request.graph_io(), path, metadata, opset, exporter, overwrite=overwrite, finish=finish)


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
    calib_cache: Path | None = None,
) -> dict[str, str]:
    """export_graph with an opening line, the time elapsed while it runs and a closing line; returns the graph's metadata.

    staged=True: `path` is in a staging folder and is placed later (a split): the closing line says
    "staged", and the caller announces "saved as" once the file is in place.
    """
    from flashvlm_export.artifacts.files import artifact_size, human_size
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.progress import plural, progress

    module = request.module(parts, verification=True)
    metadata = request.metadata(weights)
    if request.kind == "encoder":
        rounds, what = 0, f"the encoder graph ({request.precision})"
    else:
        n_rounds = request.schedule.n_rounds
        rounds = 1 if request.plugin else n_rounds  # the plugin's rounds export as one node
        inside = " in one plugin node" if request.plugin else ""
        what = f"the {request.kind} graph, K={request.budget_label} ({plural(n_rounds, 'pruning round')}{inside})"
    hint = export_hint(rounds, parameter_bytes(module), exporter)
    timer = StepTimer("ONNX", log)
    with progress(f"ONNX: exporting {what} with {exporter}", log=log, hint=hint):
        export_graph(
            request, path, parts, weights, opset, exporter, overwrite=overwrite, module=module, metadata=metadata,
            calib_cache=calib_cache, log=log,
        )  # fmt: skip
    shape = (
        f"B={request.batch}"
        if request.kind == "encoder"
        else f"K={request.budget_label}, B={request.batch}, T_max={request.t_max}"
    )
    where = "staged, placed with the rest of the split" if staged else f"saved as '{path}'"
    log(f"ONNX: export success ({request.kind} graph, {shape}) {timer.elapsed:.1f}s, {where} ({human_size(artifact_size(path))})")
    return stamped(metadata, opset)
