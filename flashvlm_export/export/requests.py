"""From what a user asks for (model, budgets, shape, options) to checked ExportRequests.

Every shape and range rule of an export is checked here, before any work: the CLI's export and
parity commands call these, and messages name the flags those commands take.
"""

from __future__ import annotations

import math

from flashvlm_export.errors import UsageError
from flashvlm_export.export.graphs import ExportRequest
from flashvlm_export.export.options import DEFAULT_FPS, MIN_OPSET, exporter_refusal
from flashvlm_export.models.registry import MODELS, get_spec
from flashvlm_export.models.spec import ModelSpec
from flashvlm_export.selector.clip import DEFAULT_RULE
from flashvlm_export.selector.config import SelectorConfig
from flashvlm_export.selector.schedule import check_budget_range


def parse_budgets(text: str, n_tokens: int, model: str) -> list[int]:
    """--budget "128" or "128,64,32": whole numbers in the budget range, each once."""
    budgets = []
    for item in text.split(","):
        try:
            k = int(item)
        except ValueError:
            raise UsageError(f"--budget {item!r} is not an integer; pass e.g. --budget 128 or --budget 128,64,32") from None
        check_budget_range(k, n_tokens, "--budget", f": {model} has N={n_tokens} visual tokens")
        budgets.append(k)
    if len(set(budgets)) != len(budgets):
        raise UsageError(f"--budget {text} repeats a value; list each budget once")
    return budgets


def check_crop_budget(budget: int, spec: ModelSpec) -> None:
    """A model cut into crops selects budget / crops tokens per crop: the budget must divide evenly, >= 2 per crop."""
    c = spec.crops
    if c == 1 or (budget % c == 0 and budget // c >= 2):
        return
    low, high = max(budget // c * c, 2 * c), max(budget // c * c + c, 3 * c)
    near = f"{low} or {high}" if low < budget else f"{low}"
    raise UsageError(
        f"--budget {budget} does not split evenly over {spec.name}'s {c} crops (--grid {spec.grid[0]}x{spec.grid[1]}: the base "
        f"image and {c - 1} crops, each selected with K / {c}); use --budget {near}"
    )


def parse_budget_range(text: str, n_tokens: int, model: str) -> tuple[int, int]:
    """--budget-range "16..256": two whole numbers in the budget range, KMIN < KMAX."""
    low, sep, high = text.partition("..")
    try:
        if not sep:
            raise ValueError
        k_min, k_max = int(low), int(high)
    except ValueError:
        raise UsageError(f"--budget-range {text!r} is not KMIN..KMAX; pass e.g. --budget-range 16..256") from None
    for k in (k_min, k_max):
        check_budget_range(k, n_tokens, "--budget-range bound", f" in {text}: {model} has N={n_tokens} visual tokens")
    if k_min >= k_max:
        raise UsageError(f"--budget-range {text} needs KMIN < KMAX; for one budget pass --budget {k_min}")
    return k_min, k_max


def export_requests(
    model: str,
    budgets: str | None,
    *,
    config: SelectorConfig,
    t_max: int | None = None,
    batch: int = 1,
    image_size: int | None = None,
    selector_only: bool = False,
    n_tokens: int | None = None,
    plugin: bool = False,
    precision: str = "fp32",
    one_budget: bool = False,
    budget_range: str | None = None,
    frames: int | None = None,
    video_budget: str = DEFAULT_RULE,
    fps: float = DEFAULT_FPS,
    grid: str | None = None,
    calibration=None,
) -> tuple[ModelSpec, list[ExportRequest]]:
    """The model spec and one ExportRequest per budget, every shape checked (memory bounds included); with
    `budget_range` ("KMIN..KMAX", exclusive with `budgets`) one request for the whole range. `budgets` None: the model's
    default for the graph's tokens (ModelSpec.default_budget).
    `frames`: a clip (video) graph of that many frames under the `video_budget` rule, its positions at `fps`."""
    from flashvlm_export.limits import check_shape_fits

    spec = get_spec(model).at_image_size(image_size).at_grid(grid)
    if frames is not None:
        check_video(spec, frames, fps, n_tokens, budget_range)
    t_max = spec.t_max if t_max is None else t_max
    if t_max < 1:
        raise UsageError(f"--t-max {t_max} must be >= 1 (room for the prompt's text tokens)")
    if batch < 1:
        raise UsageError(f"--batch {batch} must be >= 1")
    tokens = spec.n_tokens if frames is None else frames // spec.temporal_patch * spec.n_tokens
    if n_tokens is not None:
        from flashvlm_export.selector.static import TOPK_LIMIT

        if not selector_only:
            raise UsageError(f"--n-tokens {n_tokens} needs --selector-only: the full graph's N comes from the image size")
        if not 2 <= n_tokens <= TOPK_LIMIT:
            raise UsageError(f"--n-tokens {n_tokens} is out of range; use 2 <= N <= {TOPK_LIMIT} (TensorRT's TopK limit)")
        if spec.crops > 1:
            raise UsageError(
                f"--n-tokens {n_tokens}: {spec.name}'s N is its crops' ({spec.crops} x {spec.crop_tokens}); drop --n-tokens"
            )
        tokens = n_tokens
    if budget_range is not None and spec.crops > 1:
        raise UsageError(
            f"--budget-range {budget_range} is not built for a model cut into crops ({spec.name}); pass --budget K1,K2,..."
        )
    check_shape_fits(spec, tokens, t_max, batch, selector_only)
    if budget_range is not None:
        if budgets is not None:
            raise UsageError(f"--budget {budgets} and --budget-range {budget_range} exclude each other; pass one")
        k_min, k_max = parse_budget_range(budget_range, tokens, spec.name)
        ranged = dict(budget=k_max, budget_min=k_min)
    if budgets is None:  # the model's own (ModelSpec.default_budget): per crop or frame group, so it always splits evenly
        images = 1 if n_tokens is not None else spec.crops if frames is None else frames // spec.temporal_patch
        budgets = str(spec.default_budget(tokens, images))
    ks = [] if budget_range is not None else parse_budgets(budgets, tokens, spec.name)
    for k in ks:
        check_crop_budget(k, spec)
    if one_budget and len(ks) > 1:
        raise UsageError(f"--budget {budgets}: this command takes one budget")
    if selector_only and precision != "fp32":
        raise UsageError(f"--precision {precision} applies to the encoder; a --selector-only graph is always fp32, drop one")
    if calibration is not None and selector_only:
        raise UsageError("--calib-images/--calib-demo calibrate an encoder; a --selector-only graph has none, drop them")
    common = dict(t_max=t_max, batch=batch, config=config, selector_only=selector_only, n_tokens=n_tokens)
    if calibration is not None:
        common["calibration"] = calibration
    if frames is not None:
        common.update(frames=frames, video_budget=video_budget, fps=fps)
    if budget_range is not None:
        return spec, [ExportRequest(spec=spec, plugin=plugin, precision=precision, **ranged, **common)]
    return spec, [ExportRequest(spec=spec, budget=k, plugin=plugin, precision=precision, **common) for k in ks]


def check_video(spec: ModelSpec, frames: int, fps: float, n_tokens: int | None, budget_range: str | None) -> None:
    """--video: a model with a video path, an even frame count of at least one temporal group, a positive --fps."""
    if not spec.has_video:
        with_video = ", ".join(name for name, other in MODELS.items() if other.has_video)
        raise UsageError(
            f"--video: {spec.name} has no video path; use --model {with_video.split(', ')[0]} (video: {with_video}) or drop --video"
        )
    step = spec.temporal_patch
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < step or frames % step:
        fix = step if not isinstance(frames, int) or frames < step else frames + step - frames % step
        raise UsageError(
            f"--frames {frames} must be an even number of at least {step} ({spec.name} encodes frames in temporal groups "
            f"of {step}); use --frames {fix}"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise UsageError(f"--fps {fps} must be a positive frame rate; use e.g. --fps 2 (Qwen's default)")
    if n_tokens is not None:
        raise UsageError(
            f"--n-tokens {n_tokens} and --video exclude each other: a clip's N is --frames / {spec.temporal_patch} x the image's; drop --n-tokens"
        )
    if budget_range is not None:
        raise UsageError(f"--budget-range {budget_range} does not apply to --video yet; pass one --budget")


def check_export_options(plugin: bool, exporter: str, opset: int, workspace_gib: float) -> None:
    """The exporter, opset and TensorRT workspace an export runs with."""
    from flashvlm_export.limits import max_opset

    if plugin and (refusal := exporter_refusal(exporter, "plugin")):  # the other kinds: export/job.py, once planned
        raise UsageError(refusal)
    if opset < MIN_OPSET:
        raise UsageError(f"--opset {opset} is too old: LayerNormalization needs {MIN_OPSET}; use --opset {MIN_OPSET} or newer")
    highest, why = max_opset(exporter)
    if opset > highest:
        raise UsageError(f"--opset {opset} is too new: {why}; use --opset {highest} or lower")
    if not (math.isfinite(workspace_gib) and workspace_gib > 0):
        raise UsageError(f"--workspace {workspace_gib} must be a positive number of GiB, e.g. --workspace 4")
