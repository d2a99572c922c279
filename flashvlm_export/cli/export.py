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
    EXPORTERS,
    MIN_OPSET,
    PRECISION_NAMES,
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
        choices=PRECISION_NAMES,
        default=PRECISION_NAMES[0],
        help="vision encoder + projector precision, as explicit casts in the graph; the selector always runs in fp32",
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
    from flashvlm_export.export.requests import export_requests
    from flashvlm_export.models.registry import get_spec

    video = video_options(args)  # its refusals come first, as before the selector's
    spec, requests = export_requests(
        args.model,
        args.budget,
        config=selector_config(args, get_spec(args.model)),
        t_max=args.t_max,
        batch=args.batch,
        image_size=args.image_size,
        grid=args.grid,
        selector_only=args.selector_only,
        n_tokens=args.n_tokens,
        budget_range=args.budget_range,
        plugin=args.plugin,
        precision=args.precision,
        **video,
    )
    return spec, requests, plan_outputs(requests, Path(args.out_dir), args.out, args.split, args.fused)


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
        log(f"Done. Check it: {commands.PROG} parity --manifest {done.manifest}{weights_flag}")
        picture = "--video CLIP" if args.video else "--image PHOTO"
        log(f"Run it:   {commands.PROG} run --manifest {done.manifest} --budget {first} {picture} --question TEXT")
    elif done.engines:
        log(f"Done. Check it: {commands.PROG} parity --engine {done.engines[0]} --graph {done.graphs[0]}{weights_flag}")
    else:
        log(f"Done. Check it: {commands.PROG} parity --graph {done.graphs[0]}{weights_flag}")
    return 0
