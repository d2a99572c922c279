"""flashvlm-export [options]: the export, the command when no command word is given (export/job.py does it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.cli import commands
from flashvlm_export.cli.flags import (
    HelpFormatter,
    Parser,
    add_graph_flags,
    add_model_flags,
    add_selector_flags,
    given_flags,
    log,
    selector_config,
)
from flashvlm_export.errors import UsageError
from flashvlm_export.export.options import (
    DEFAULT_EXPORTER,
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_OPSET,
    ENCODER_PRECISIONS,
    EXPORTERS,
    MIN_OPSET,
    exporter_help,
)
from flashvlm_export.plugin.build import DEFAULT_BUILD_DIR
from flashvlm_export.selector.config import VIDEO_BUDGETS as RULES


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=commands.PROG,
        usage=commands.usage(),
        description="Export the vision encoder, projector and FlashVLM selector as one static-shape ONNX graph.",
        epilog=commands.listing(),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"{commands.PROG} {__version__}")
    add_model_flags(p)
    add_graph_flags(p, many_budgets=True)
    add_selector_flags(p)
    v = p.add_argument_group("video (Qwen2.5-VL, Qwen3-VL, Qwen3.5; docs/MODELS.md)")
    v.add_argument("--video", action="store_true", help="export for clips: F frames at the fixed side, F/2 temporal groups")
    v.add_argument("--frames", type=int, help=f"with --video: frames per clip, even (default: {DEFAULT_FRAMES})")
    v.add_argument(
        "--video-budget",
        choices=RULES,
        help="with --video: per-group splits K evenly over the temporal groups (the default); joint selects once over all",
    )
    v.add_argument(
        "--fps",
        type=float,
        help=f"with --video: the frame rate clips are sampled at, which sets the tokens' temporal positions (default: {DEFAULT_FPS:g})",
    )
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="PATH", help="graph file (one budget only); default: graphs/<model>[_selector]_b<K>.onnx")
    o.add_argument("--out-dir", metavar="DIR", default="graphs", help="folder for default-named graphs (default: graphs)")
    o.add_argument(
        "--force",
        action="store_true",
        help="overwrite existing graphs and sidecars (symbolic links included: the link is replaced)",
    )
    o.add_argument(
        "--opset",
        type=int,
        default=DEFAULT_OPSET,
        help=f"ONNX opset, >= {MIN_OPSET} and at most what the installed torch exporter writes (default: {DEFAULT_OPSET})",
    )
    o.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default=DEFAULT_EXPORTER,
        help=exporter_help(),
    )
    t = p.add_argument_group("deployment")
    t.add_argument(
        "--precision",
        choices=ENCODER_PRECISIONS,
        default=ENCODER_PRECISIONS[0],
        help="vision encoder + projector precision: fp16/bf16 as explicit casts, int8/fp8 as Q/DQ nodes calibrated on "
        "pictures (--calib-images or --calib-demo); the selector always runs in fp32",
    )
    t.add_argument(
        "--calib-images",
        metavar="DIR",
        help="with --precision int8/fp8: a folder of your own photos to calibrate on (a few hundred like the ones you "
        "will run; docs/QUANTIZATION.md)",
    )
    t.add_argument(
        "--calib-demo",
        type=int,
        metavar="N",
        help="with --precision int8/fp8, for tests and demos: N pictures the tool draws (recorded as not representative)",
    )
    t.add_argument(
        "--plugin", action="store_true", help="replace the unrolled pruning rounds by one flashvlm::ResidualPrune plugin node"
    )
    t.add_argument(
        "--split",
        action="store_true",
        help="one encoder graph, one small selector graph per budget and a manifest (the default when --budget lists several)",
    )
    t.add_argument("--fused", action="store_true", help="one full graph per budget, each with its own copy of the encoder")
    t.add_argument(
        "--aspects",
        nargs="?",
        const="",
        metavar="SHAPES",
        help="one split holding several input shapes, chosen per photo by run --manifest: alone, the common aspects "
        "1:1, 4:3, 3:4, 16:9, 9:16 at the square's token count (Qwen) or every grid pinpoint of the checkpoint "
        "(LLaVA-NeXT); or a list, e.g. 448x448,392x588 (height x width), 4:3 (width:height), or grids 2x2,1x3",
    )
    t.add_argument(
        "--engine", action="store_true", help="also build a TensorRT engine from each graph (needs TensorRT and a GPU)"
    )
    t.add_argument("--engine-dir", metavar="DIR", default="engines", help="folder for engines (default: engines)")
    t.add_argument(
        "--timing-cache", metavar="PATH", help="TensorRT timing cache, saved and reused (default: <engine-dir>/timing.cache)"
    )
    t.add_argument(
        "--plugin-lib", metavar="PATH", help=f"libflashvlm_plugins.so (default: $FLASHVLM_PLUGIN_LIB or {DEFAULT_BUILD_DIR}/)"
    )
    t.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace limit in GiB, > 0 (default: 4)")
    return p


def video_options(args) -> dict:
    """export_requests' clip keywords from --video, --frames, --video-budget and --fps (the last three need --video)."""
    given = {
        flag: value
        for flag, value in (("--frames", args.frames), ("--video-budget", args.video_budget), ("--fps", args.fps))
        if value is not None
    }
    if not args.video:
        if given:
            flag = next(iter(given))
            raise UsageError(f"{flag} {given[flag]} applies to clips; add --video (or drop {flag})")
        return {}
    frames = DEFAULT_FRAMES if args.frames is None else args.frames
    rule = args.video_budget or RULES[0]
    return dict(frames=frames, video_budget=rule, fps=DEFAULT_FPS if args.fps is None else args.fps)


def plan_export(args):
    """The parsed flags' checked requests and the files they write: (spec, requests, outputs). Nothing is written."""
    from flashvlm_export.export.job import plan_outputs
    from flashvlm_export.export.quantize import calibration_from_flags
    from flashvlm_export.export.requests import export_requests
    from flashvlm_export.models.registry import get_spec

    video = video_options(args)  # its refusals come first, as before the selector's
    calibration = calibration_from_flags(args.precision, args.calib_images, args.calib_demo)
    if calibration is not None:  # the pictures go through runtime/'s processor path (export/ sits below runtime/)
        from dataclasses import replace

        from flashvlm_export.runtime.calibration import calibration_pixels

        calibration = replace(calibration, source=calibration_pixels)
    common = dict(
        calibration=calibration,
        config=selector_config(args, get_spec(args.model)),
        t_max=args.t_max,
        batch=args.batch,
        selector_only=args.selector_only,
        n_tokens=args.n_tokens,
        budget_range=args.budget_range,
        plugin=args.plugin,
        precision=args.precision,
        **video,
    )
    if args.aspects is not None:
        return plan_shapes(args, common)
    spec, requests = export_requests(args.model, args.budget, image_size=args.image_size, grid=args.grid, **common)
    return spec, requests, plan_outputs(requests, Path(args.out_dir), args.out, args.split, args.fused)


def plan_shapes(args, common: dict):
    """--aspects: each shape's checked requests (the same budgets: the square's default when none given) and the one
    split folder that holds them (export/shapes.py)."""
    from flashvlm_export.export.job import Outputs
    from flashvlm_export.export.requests import export_requests
    from flashvlm_export.export.shapes import shapes_plan
    from flashvlm_export.models.shapes import parse_aspects, shape_key

    for flag, given in (
        ("--fused", args.fused),
        ("--selector-only", args.selector_only),
        ("--out", args.out),
        ("--grid", args.grid),
    ):
        if given:
            raise UsageError(f"--aspects writes one split folder of several shapes; drop {flag} (or --aspects)")
    base, base_requests = export_requests(args.model, args.budget, image_size=args.image_size, **common)
    if not base.square:
        raise UsageError(
            f"--image-size {args.image_size} with --aspects: --aspects sets the shapes, a square --image-size their token "
            f"count; pass a square side (e.g. --image-size {base.image_size}) or list the shapes in --aspects"
        )
    shapes = parse_aspects(args.aspects, base)
    budgets = args.budget  # none given: the square's default for every Qwen shape; each grid's own for LLaVA-NeXT's
    if budgets is None and args.budget_range is None and base.grid is None:
        budgets = ",".join(str(r.budget) for r in base_requests)
    shape_requests = []
    for shape in shapes:
        size = None if shape.grid is not None else shape.image_shape
        grid = None if shape.grid is None else shape_key(shape)
        shape_requests.append(export_requests(args.model, budgets, image_size=size, grid=grid, **common)[1])
    plan = shapes_plan(shape_requests, Path(args.out_dir))
    requests = [r for rs in shape_requests for r in rs]
    return base, requests, Outputs(requests, plan.graphs(), plan)


def main(argv: list[str]) -> int:
    from flashvlm_export.export.job import run_export
    from flashvlm_export.export.requests import check_export_options
    from flashvlm_export.models.weights import WeightsSource

    args = parser().parse_args(argv)
    check_export_options(args.plugin, args.exporter, args.opset, args.workspace)
    spec, _, outputs = plan_export(args)
    source = None if args.selector_only else WeightsSource.from_flags(args.random_weights, args.seed, args.model_path)
    engines = None
    if args.engine:
        cache = Path(args.timing_cache) if args.timing_cache else None
        from flashvlm_export.trt.engines import EngineJob, EngineOptions

        options = EngineOptions(
            Path(args.engine_dir), cache, args.plugin_lib, args.workspace, "--engine-dir" in given_flags(argv)
        )
        engines = EngineJob(options)
    done = run_export(spec, outputs, source, args.opset, args.exporter, engines, args.force, log=log)
    weights_flag = "" if done.weights is None else f" {done.weights.flags()}"
    if done.manifest is not None:
        first = outputs.plan.selectors[-1].budget
        budgets = {r.budget for r in outputs.requests}
        budget = "" if len(budgets) > 1 and len(outputs.plan.selectors) == 1 else f" --budget {first}"  # each shape's own
        log(f"Done. Check it: {commands.PROG} parity --manifest {done.manifest}{weights_flag}")
        picture = "--video CLIP" if args.video else "--image PHOTO"
        log(f"Run it:   {commands.PROG} run --manifest {done.manifest}{budget} {picture} --question TEXT")
    elif done.engines:
        log(f"Done. Check it: {commands.PROG} parity --engine {done.engines[0]} --graph {done.graphs[0]}{weights_flag}")
    else:
        log(f"Done. Check it: {commands.PROG} parity --graph {done.graphs[0]}{weights_flag}")
    return 0
