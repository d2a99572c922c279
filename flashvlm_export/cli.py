"""flashvlm-export: export FlashVLM token selection as static ONNX graphs (and TensorRT engines).

flashvlm-export --model llava15 --budget 128 --random-weights     export graphs/llava15_b128.onnx
flashvlm-export parity --graph graphs/llava15_b128.onnx --random-weights

This module parses flags and dispatches; the work lives in export/, parity/, plugin/, trt/ and bench/.
Nothing heavy (torch, onnx) is imported before a command runs, so --help is instant.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.errors import FlashVLMError, ParityError, Terminated, UsageError
from flashvlm_export.export.options import DEFAULT_EXPORTER, DEFAULT_OPSET, EXPORTERS, MIN_OPSET, PRECISION_NAMES
from flashvlm_export.models.spec import LLAVA15
from flashvlm_export.plugin.build import DEFAULT_BUILD_DIR

SUBCOMMAND_HELP = {
    "parity": "token-index parity against the PyTorch reference",
    "build-plugin": "build the ResidualPrune TensorRT plugin",
    "bench": "measured costs on this machine",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message}; see {self.prog} --help")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- shared flags


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and weights")
    g.add_argument(
        "--model", default=LLAVA15.name, help=f"model spec name (default: {LLAVA15.name}; llava15-tiny is a test-size model)"
    )
    g.add_argument(
        "--model-path",
        metavar="DIR",
        help="local checkpoint directory (config.json + *.safetensors); default: the local HF cache",
    )
    g.add_argument(
        "--random-weights", action="store_true", help="build the exact architecture with seeded random weights, offline"
    )
    g.add_argument("--seed", type=int, default=0, help="seed of --random-weights (default: 0)")


def _add_graph_flags(p: argparse.ArgumentParser, many_budgets: bool) -> None:
    g = p.add_argument_group("graph shape")
    g.add_argument(
        "--budget",
        default="128",
        help="visual tokens kept, K (2 <= K <= N)"
        + (
            "; a comma list exports several from one model load: one encoder and a selector per budget "
            "(--split, the default for several; --fused for a full graph each)"
            if many_budgets
            else ""
        ),
    )
    g.add_argument(
        "--t-max",
        type=int,
        help=f"padded text rows T_max of the static graph (default: the model's, {LLAVA15.t_max} for {LLAVA15.name}); "
        "bounded by memory",
    )
    g.add_argument("--batch", type=int, default=1, help="static batch size B (default: 1; bounded by memory)")
    g.add_argument(
        "--image-size", type=int, help=f"input image side; must equal the model's ({LLAVA15.image_size} for {LLAVA15.name})"
    )
    g.add_argument("--selector-only", action="store_true", help="export the selection core alone (inputs X, a, P(X), T, mask)")
    g.add_argument(
        "--n-tokens", type=int, help="with --selector-only: visual tokens N per image if not the model's (own encoder, video)"
    )


def _add_selector_flags(p: argparse.ArgumentParser) -> None:
    from flashvlm_export.selector.config import GATES, RANGES, SelectorConfig

    d = SelectorConfig()

    def interval(name: str) -> str:
        low, high, low_open, high_open = RANGES[name]
        return f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    g = p.add_argument_group("selector hyperparameters (shared/ALGORITHM.md; defaults are the authors')")
    floats = (
        ("eta", "log-fusion weight of the text score"),
        ("text_temperature", "softmax temperature over text tokens"),
        ("patch_temperature", "softmax temperature over patches"),
        ("power", "power-law sharpening exponent"),
        ("top_p", "top-p gate keeps q >= quantile(1 - top_p)"),
        ("attenuation", "factor on q below the gate"),
        ("important_ratio", "K_imp = floor(ratio * K)"),
    )
    for name, what in floats:
        flag = "--" + name.replace("_", "-")
        g.add_argument(
            flag, type=float, default=getattr(d, name), help=f"{what}, in {interval(name)} (default: {getattr(d, name)})"
        )
    g.add_argument("--step", type=int, default=d.step, help=f"tokens pruned per round at most, >= 1 (default: {d.step})")
    g.add_argument(
        "--max-rounds", type=int, default=d.max_rounds, help="cap on pruning rounds; raises --step to fit (default: no cap)"
    )
    g.add_argument("--gate", choices=GATES, default=d.gate, help=f"query gating (default: {d.gate})")


def _selector_config(args):
    from flashvlm_export.selector.config import SelectorConfig

    try:
        return SelectorConfig(
            eta=args.eta,
            text_temperature=args.text_temperature,
            patch_temperature=args.patch_temperature,
            power=args.power,
            top_p=args.top_p,
            attenuation=args.attenuation,
            important_ratio=args.important_ratio,
            step=args.step,
            max_rounds=args.max_rounds,
            gate=args.gate,
        )
    except UsageError as exc:  # name the flag the user typed: "--top-p nan ..." rather than "top_p=nan ..."
        text = str(exc)
        name, _, rest = text.partition("=")
        if name.isidentifier():
            value, _, tail = rest.partition(" ")
            raise UsageError(f"--{name.replace('_', '-')} {value} {tail}") from None
        raise


def _budgets(text: str, n_tokens: int, model: str) -> list[int]:
    budgets = []
    for item in text.split(","):
        try:
            k = int(item)
        except ValueError:
            raise UsageError(f"--budget {item!r} is not an integer; pass e.g. --budget 128 or --budget 128,64,32") from None
        if not 2 <= k <= n_tokens:
            raise UsageError(f"--budget {k} is out of range: {model} has N={n_tokens} visual tokens; use 2 <= K <= {n_tokens}")
        budgets.append(k)
    if len(set(budgets)) != len(budgets):
        raise UsageError(f"--budget {text} repeats a value; list each budget once")
    return budgets


def _requests(args, many_budgets: bool, plugin: bool = False, precision: str = "fp32"):
    """The model spec and one ExportRequest per budget, every shape flag checked (memory bounds included)."""
    from flashvlm_export.export.graphs import ExportRequest
    from flashvlm_export.limits import check_shape_fits
    from flashvlm_export.models.spec import get_spec

    spec = get_spec(args.model)
    if args.image_size is not None and args.image_size != spec.image_size:
        raise UsageError(
            f"--image-size {args.image_size} does not fit {spec.name}: it takes {spec.image_size}x{spec.image_size} images "
            f"(N={spec.n_tokens} tokens); resize the image or drop --image-size"
        )
    t_max = spec.t_max if args.t_max is None else args.t_max
    if t_max < 1:
        raise UsageError(f"--t-max {t_max} must be >= 1 (room for the prompt's text tokens)")
    if args.batch < 1:
        raise UsageError(f"--batch {args.batch} must be >= 1")
    n_tokens = spec.n_tokens
    if args.n_tokens is not None:
        from flashvlm_export.selector.static import TOPK_LIMIT

        if not args.selector_only:
            raise UsageError(f"--n-tokens {args.n_tokens} needs --selector-only: the full graph's N comes from the image size")
        if not 2 <= args.n_tokens <= TOPK_LIMIT:
            raise UsageError(f"--n-tokens {args.n_tokens} is out of range; use 2 <= N <= {TOPK_LIMIT} (TensorRT's TopK limit)")
        n_tokens = args.n_tokens
    check_shape_fits(spec, n_tokens, t_max, args.batch, args.selector_only)
    budgets = _budgets(args.budget, n_tokens, spec.name)
    if not many_budgets and len(budgets) > 1:
        raise UsageError(f"--budget {args.budget}: this command takes one budget")
    config = _selector_config(args)
    if args.selector_only and precision != "fp32":
        raise UsageError(f"--precision {precision} applies to the encoder; a --selector-only graph is always fp32, drop one")
    return spec, [
        ExportRequest(
            spec=spec,
            budget=k,
            t_max=t_max,
            batch=args.batch,
            config=config,
            selector_only=args.selector_only,
            n_tokens=args.n_tokens,
            plugin=plugin,
            precision=precision,
        )
        for k in budgets
    ]


def _weights_source(args, weights_meta: str | None = None):
    """The flags' weights source; with none given, the one a graph's metadata records (parity rebuilds it)."""
    from flashvlm_export.models.llava import WeightsSource

    if not args.random_weights and args.model_path is None and weights_meta:
        recorded = WeightsSource.from_tag(weights_meta)
        if recorded.random:
            return recorded  # rebuild the graph's own random weights
    return WeightsSource.from_flags(args.random_weights, args.seed, args.model_path)


def _load_parts(spec, args, weights_meta: str | None = None):
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.models.llava import get_parts

    source = _weights_source(args, weights_meta)
    timer = StepTimer("Model")
    parts = get_parts(spec, source)
    timer.done(f"loaded {spec.name} ({parts.source})")
    return parts


# ---------------------------------------------------------------- export (the main job)


def export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export",
        usage="flashvlm-export [options]   (export a graph)\n       flashvlm-export {parity,build-plugin,bench} [options]",
        description="Export the vision encoder, projector and FlashVLM selector as one static-shape ONNX graph.",
        epilog="subcommands: " + "; ".join(f"flashvlm-export {name} --help ({what})" for name, what in SUBCOMMAND_HELP.items()),
    )
    p.add_argument("--version", action="version", version=f"flashvlm-export {__version__}")
    _add_model_flags(p)
    _add_graph_flags(p, many_budgets=True)
    _add_selector_flags(p)
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
        help=f"torch.onnx exporter (default: {DEFAULT_EXPORTER}; torchscript is much faster for many pruning rounds)",
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
    t.add_argument("--engine", action="store_true", help="also build a TensorRT engine from each graph (needs TensorRT and a GPU)")
    t.add_argument("--engine-dir", metavar="DIR", default="engines", help="folder for engines (default: engines)")
    t.add_argument(
        "--timing-cache", metavar="PATH", help="TensorRT timing cache, saved and reused (default: <engine-dir>/timing.cache)"
    )
    t.add_argument(
        "--plugin-lib", metavar="PATH", help=f"libflashvlm_plugins.so (default: $FLASHVLM_PLUGIN_LIB or {DEFAULT_BUILD_DIR}/)"
    )
    t.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace limit in GiB, > 0 (default: 4)")
    return p


def _graph_paths(args, requests) -> list[Path]:
    from flashvlm_export.artifacts.naming import graph_name

    if args.out is not None:
        if len(requests) > 1:
            raise UsageError("--out names one file but --budget lists several; use --out-dir for several budgets")
        if not args.out.endswith(".onnx"):
            raise UsageError(f"--out {args.out} must end in .onnx")
        return [Path(args.out)]
    return [Path(args.out_dir) / graph_name(r) for r in requests]


def _check_export_flags(args) -> None:
    from flashvlm_export.limits import max_opset

    if args.plugin and args.exporter != "dynamo":
        raise UsageError(
            f"--plugin needs the dynamo exporter (its custom node does not export with {args.exporter}); drop --exporter"
        )
    if args.opset < MIN_OPSET:
        raise UsageError(
            f"--opset {args.opset} is too old: LayerNormalization needs {MIN_OPSET}; use --opset {MIN_OPSET} or newer"
        )
    highest, why = max_opset(args.exporter)
    if args.opset > highest:
        raise UsageError(f"--opset {args.opset} is too new: {why}; use --opset {highest} or lower")
    if not (math.isfinite(args.workspace) and args.workspace > 0):
        raise UsageError(f"--workspace {args.workspace} must be a positive number of GiB, e.g. --workspace 4")


def _split_chosen(args, requests) -> bool:
    """Split (one encoder, a selector per budget, a manifest) with --split, and by default for several budgets."""
    if args.split and args.fused:
        raise UsageError("--split and --fused exclude each other; pass one")
    if args.selector_only:
        if args.split:
            raise UsageError("--split splits the encoder from the selectors; a --selector-only export has no encoder, drop one")
        return False
    split = args.split or (len(requests) > 1 and not args.fused)
    if split and args.out is not None:
        raise UsageError(f"--out {args.out} names one graph; a split export writes a folder: use --out-dir (or --fused)")
    return split


def run_export(argv: list[str]) -> int:
    from flashvlm_export.artifacts.staging import check_writable
    from flashvlm_export.export.graphs import export_logged

    args = export_parser().parse_args(argv)
    _check_export_flags(args)
    spec, requests = _requests(args, many_budgets=True, plugin=args.plugin, precision=args.precision)
    plan = None
    if _split_chosen(args, requests):
        from flashvlm_export.export.split import split_plan

        plan = split_plan(requests, Path(args.out_dir))
    paths = plan.outputs() if plan else _graph_paths(args, requests)
    source = None
    if not args.selector_only:  # the "no weights" error comes before any "already exists" one
        from flashvlm_export.models.llava import resolve_weights_dir

        source = _weights_source(args)
        if not source.random:
            resolve_weights_dir(spec, source.path)
    engines, plugin_lib = [], None
    if args.engine and plan and plan.engine_folder(Path(args.engine_dir)).resolve() == plan.folder.resolve():
        raise UsageError(
            f"--engine-dir {args.engine_dir} puts a split's engines beside its graphs, where their sidecars would "
            "take the graphs' sidecar names; choose another --engine-dir (default: engines)"
        )
    if args.engine:  # fail fast, before the export, when TensorRT, the GPU or the plugin is missing
        from flashvlm_export.artifacts.naming import artifact_stem
        from flashvlm_export.device import gpu_info
        from flashvlm_export.trt.env import import_tensorrt

        import_tensorrt()
        gpu_info()
        if args.plugin:
            from flashvlm_export.plugin.build import find_plugin_library

            plugin_lib = find_plugin_library(args.plugin_lib)
        if plan:
            engines = plan.engines(Path(args.engine_dir))
        else:
            engines = [Path(args.engine_dir) / f"{artifact_stem(r)}.plan" for r in requests]
    check_writable(paths + engines, args.force, log=log)
    parts = None if args.selector_only else _load_parts(spec, args)
    weights = None if parts is None else parts.source.tag
    weights_flag = "" if parts is None else f" {parts.source.flags()}"
    if plan:
        return _export_split(args, plan, parts, weights, weights_flag, engines, plugin_lib)
    for request, path in zip(requests, paths, strict=True):
        export_logged(request, path, parts, weights, args.opset, args.exporter, overwrite=args.force, log=log)
    cache = _timing_cache(args)
    for request, path, engine in zip(requests, paths, engines, strict=False):
        from flashvlm_export.trt.build import build_engine

        build_engine(path, engine, request.metadata(weights), request.precision, plugin_lib, cache, args.workspace, log=log)
    if engines:
        log(f"Done. Check it: flashvlm-export parity --engine {engines[0]}{weights_flag}")
    else:
        log(f"Done. Check it: flashvlm-export parity --graph {paths[0]}{weights_flag}")
    return 0


def _timing_cache(args) -> Path:
    return Path(args.timing_cache) if args.timing_cache else Path(args.engine_dir) / "timing.cache"


def _export_split(args, plan, parts, weights, weights_flag, engines, plugin_lib) -> int:
    from flashvlm_export.artifacts.files import artifact_size, human_size
    from flashvlm_export.export.split import add_engines, export_split

    manifest_path = export_split(plan, parts, weights, args.opset, args.exporter, overwrite=args.force, log=log)
    selectors = sum(artifact_size(plan.selector_graph(r)) for r in plan.selectors)
    log(
        f"Split: wrote {manifest_path}: one encoder graph ({human_size(artifact_size(plan.encoder_graph))}) and "
        f"{len(plan.selectors)} selector graphs (K = {', '.join(str(r.budget) for r in plan.selectors)}, "
        f"{human_size(selectors)} together)"
    )
    if engines:
        from flashvlm_export.trt.build import build_engine

        cache = _timing_cache(args)
        requests = [plan.encoder, *plan.selectors]
        built = {}
        for request, graph, engine in zip(requests, plan.graphs(), engines, strict=True):
            engine.parent.mkdir(parents=True, exist_ok=True)
            library = plugin_lib if request.kind == "selector" else None
            own = request.metadata(weights if request.kind == "encoder" else None)  # selector graphs hold no weights
            build_engine(graph, engine, own, request.precision, library, cache, args.workspace, log=log)
            built[graph.stem] = engine
        add_engines(manifest_path, built)
        log(f"Split: the manifest lists the {len(built)} engines in {engines[0].parent}")
    first = plan.selectors[-1].budget
    log(f"Done. Check it: flashvlm-export parity --manifest {manifest_path}{weights_flag}")
    log(f"Run it:   flashvlm-export run --manifest {manifest_path} --budget {first} --image PHOTO --question TEXT")
    return 0


# ---------------------------------------------------------------- parity


def parity_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export parity",
        description=(
            "Parity of an exported graph (or engine) with the PyTorch reference, in the three layers of "
            "shared/ALGORITHM.md: decisions exact, arithmetic within stated bounds, outcome overlap beside the "
            "reference's own sensitivity. Exit 0 when layers 1 and 2 hold (and the --min-overlap gate, if given)."
        ),
    )
    p.add_argument(
        "--graph", metavar="PATH", help="graph to check; default: export a selector graph for --model/--budget to a temp dir"
    )
    p.add_argument(
        "--engine", metavar="PLAN", help="also check this TensorRT engine (its sidecar names the graph); needs TensorRT and a GPU"
    )
    p.add_argument(
        "--manifest",
        metavar="JSON",
        help="check a split export: each selector on the encoder's own outputs, the chain end to end, per budget",
    )
    p.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so for an engine built with --plugin")
    p.add_argument(
        "--polygraphy", action="store_true", help="with --engine: also replay the saved records through `polygraphy run --trt`"
    )
    p.add_argument(
        "--min-overlap",
        type=float,
        metavar="F",
        help="make layer 3 a gate: every image's index-set overlap with the reference must be >= F (0..1)",
    )
    _add_model_flags(p)
    _add_graph_flags(p, many_budgets=False)
    _add_selector_flags(p)
    c = p.add_argument_group("corpus and records")
    c.add_argument("--corpus-seed", type=int, default=0, help="seed of the parity corpus and of the sensitivity noise (default: 0)")
    c.add_argument("--repeats", type=int, default=2, help="instances of each corpus case (default: 2)")
    c.add_argument("--load-inputs", metavar="JSON", help="run these Polygraphy-format inputs instead of the corpus")
    c.add_argument(
        "--save-dir",
        metavar="DIR",
        default="graphs/parity",
        help="where the Polygraphy inputs/outputs JSON and the parity report go (default: graphs/parity)",
    )
    c.add_argument("--no-save", action="store_true", help="do not write records")
    return p


# flags that describe a graph to export: moot (and refused) when --graph or --engine names one
GRAPH_DEFINING_FLAGS = (
    "--model", "--budget", "--t-max", "--batch", "--image-size", "--selector-only", "--n-tokens",
    "--eta", "--text-temperature", "--patch-temperature", "--power", "--top-p", "--attenuation",
    "--important-ratio", "--step", "--max-rounds", "--gate",
)  # fmt: skip
MAX_PARITY_REPEATS = 50  # each repeat is 7 cases through every backend; 50 is ~350 cases


def _given_flags(argv: list[str]) -> set[str]:
    return {a.split("=", 1)[0] for a in argv if a.startswith("--")}


def run_parity_command(argv: list[str]) -> int:
    from flashvlm_export.export.graphs import export_graph, request_from_metadata
    from flashvlm_export.export.metadata import graph_metadata
    from flashvlm_export.parity.run import load_cases, run_parity

    args = parity_parser().parse_args(argv)
    if not 1 <= args.repeats <= MAX_PARITY_REPEATS:
        raise UsageError(f"--repeats {args.repeats} is out of range; use 1 to {MAX_PARITY_REPEATS}")
    if not 0 <= args.corpus_seed < 2**32:
        raise UsageError(f"--corpus-seed {args.corpus_seed} is out of range; use 0 to {2**32 - 1}")
    if args.min_overlap is not None and not 0.0 <= args.min_overlap <= 1.0:
        raise UsageError(f"--min-overlap {args.min_overlap} is not a fraction; use a value in [0, 1]")
    if args.polygraphy and not args.engine:
        raise UsageError("--polygraphy replays the records against an engine; pass --engine PLAN or drop --polygraphy")
    if args.manifest and (args.graph or args.engine or args.load_inputs):
        raise UsageError("--manifest names its own graphs and runs the pipeline corpus; drop --graph/--engine/--load-inputs")
    if args.graph or args.engine or args.manifest:
        moot = sorted(_given_flags(argv) & set(GRAPH_DEFINING_FLAGS))
        if moot:
            named = "--graph" if args.graph else "--engine" if args.engine else "--manifest"
            raise UsageError(
                f"{', '.join(moot)} cannot apply: {named} names an exported artifact whose metadata fixes them; drop them"
            )
    save_dir = None if args.no_save else Path(args.save_dir)
    if args.manifest:
        return _manifest_parity(args, argv, save_dir)
    cases = load_cases(Path(args.load_inputs)) if args.load_inputs else None
    extra, meta = [], None
    if args.engine:
        from flashvlm_export.parity.engine import engine_backend

        runner = engine_backend(Path(args.engine), Path(args.plugin_lib) if args.plugin_lib else None, log=log)
        extra, meta = [runner], runner.graph_metadata
        args.graph = args.graph or runner.graph_path
    with tempfile.TemporaryDirectory(prefix="flashvlm-parity-") as scratch:
        if args.graph is None:
            args.selector_only = True
            _, (request,) = _requests(args, many_budgets=False)
            graph = Path(scratch) / "selector.onnx"
            start = time.perf_counter()
            export_graph(request, graph)
            log(
                f"ONNX: exported the {request.spec.name} selector at K={request.budget} for the check {time.perf_counter() - start:.1f}s"
            )
        else:
            graph = Path(args.graph)
        meta = meta or graph_metadata(graph)
        request = request_from_metadata(meta, str(graph))
        if cases is None:
            from flashvlm_export.limits import check_repeats_fit
            from flashvlm_export.parity.corpus import PIPELINE_CASES, SELECTOR_CASES

            r, names = request, SELECTOR_CASES if request.selector_only else PIPELINE_CASES
            check_repeats_fit(args.repeats, len(names), r.spec, r.tokens, r.t_max, r.batch, r.selector_only)
        parts = None
        if not request.selector_only:  # the graph's own weights; flags naming others are refused
            from flashvlm_export.artifacts.timing import StepTimer
            from flashvlm_export.models.llava import get_parts, weights_for_graph

            seed = args.seed if "--seed" in _given_flags(argv) else None
            source = weights_for_graph(meta.get("weights"), args.random_weights, seed, args.model_path, str(graph))
            timer = StepTimer("Model")
            parts = get_parts(request.spec, source)
            timer.done(f"loaded {request.spec.name} ({parts.source})")
        start = time.perf_counter()
        reports = run_parity(
            graph, parts, args.corpus_seed, args.repeats, cases, save_dir, extra, log=log, meta=meta, min_overlap=args.min_overlap
        )
        elapsed = time.perf_counter() - start
    if args.engine and args.polygraphy and save_dir is not None:
        from flashvlm_export.trt.polygraphy_check import replay_with_polygraphy

        # Polygraphy compares index sets exactly: layer 3's exact match, reported, never the verdict
        replay_with_polygraphy(Path(args.engine), save_dir, Path(graph).stem, args.plugin_lib, log=log)
    failed = [r.backend for r in reports if not r]
    if failed:
        log(f"FAILED: {', '.join(failed)} ({elapsed:.1f}s)")
        raise ParityError("parity failed")
    log(f"PASSED: layers 1 and 2 hold for every backend{' and the overlap gate' if args.min_overlap is not None else ''} ({elapsed:.1f}s)")
    return 0


def _manifest_parity(args, argv, save_dir) -> int:
    from flashvlm_export.artifacts.timing import StepTimer
    from flashvlm_export.export.manifest import read_manifest
    from flashvlm_export.limits import check_repeats_fit
    from flashvlm_export.models.llava import get_parts, weights_for_graph
    from flashvlm_export.parity.corpus import PIPELINE_CASES
    from flashvlm_export.parity.split import run_split_parity

    timer = StepTimer("Manifest")
    manifest = read_manifest(Path(args.manifest))
    timer.done(f"{manifest.path}: every file's sha256 and every graph's metadata agree")
    r = manifest.request(manifest.budgets[0])
    check_repeats_fit(args.repeats, len(PIPELINE_CASES), r.spec, r.tokens, r.t_max, r.batch, False)
    seed = args.seed if "--seed" in _given_flags(argv) else None
    source = weights_for_graph(manifest.weights, args.random_weights, seed, args.model_path, str(manifest.path))
    timer = StepTimer("Model")
    parts = get_parts(r.spec, source)
    timer.done(f"loaded {r.spec.name} ({parts.source})")
    start = time.perf_counter()
    reports = run_split_parity(
        manifest, parts, args.corpus_seed, args.repeats, None, save_dir, log=log, min_overlap=args.min_overlap
    )
    elapsed = time.perf_counter() - start
    failed = [k for k, report in reports.items() if not report]
    if failed:
        log(f"FAILED: K = {', '.join(map(str, failed))} ({elapsed:.1f}s)")
        raise ParityError("parity failed")
    gate = " and the overlap gate" if args.min_overlap is not None else ""
    log(f"PASSED: layers 1 and 2 hold for every budget of the chain{gate} ({elapsed:.1f}s)")
    return 0


# ---------------------------------------------------------------- build-plugin


def build_plugin_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export build-plugin",
        description="Build libflashvlm_plugins.so (the ResidualPrune TensorRT plugin) with CMake and nvcc.",
    )
    p.add_argument("--tensorrt-include", metavar="DIR", help="TensorRT include/ (default: $TENSORRT_INCLUDE_DIR or system paths)")
    p.add_argument(
        "--cuda-arch",
        help="CMAKE_CUDA_ARCHITECTURES, e.g. 87 (Orin), 110 (Thor, CUDA 13), 80 (A100), 90 (H100/H200); "
        "default: this GPU's compute capability (x86-64 without a readable GPU: 80;86;89;90)",
    )
    p.add_argument("--build-dir", default=str(DEFAULT_BUILD_DIR), help=f"CMake build folder (default: {DEFAULT_BUILD_DIR})")
    return p


def run_build_plugin(argv: list[str]) -> int:
    from flashvlm_export.plugin.build import build_plugin

    args = build_plugin_parser().parse_args(argv)
    library = build_plugin(args.tensorrt_include, Path(args.build_dir), args.cuda_arch, log=log)
    log(f"Done. Use it: flashvlm-export ... --engine --plugin --plugin-lib {library}  (or export FLASHVLM_PLUGIN_LIB={library})")
    return 0


# ---------------------------------------------------------------- sidecar


def sidecar_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export sidecar",
        description=(
            "Write the sidecar record (X.json) of an engine trtexec built, so that parity --engine and the runner "
            "accept it. Loads the engine with this machine's TensorRT and GPU first."
        ),
    )
    p.add_argument("--engine", metavar="PLAN", required=True, help="the engine trtexec saved (--saveEngine)")
    p.add_argument("--onnx", metavar="PATH", required=True, help="the graph flashvlm-export exported and trtexec built from")
    p.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so for a --plugin graph (default: as build-plugin)")
    p.add_argument("--force", action="store_true", help="overwrite an existing sidecar")
    return p


def run_sidecar(argv: list[str]) -> int:
    from flashvlm_export.trt.sidecar import record_trtexec_engine

    args = sidecar_parser().parse_args(argv)
    record_trtexec_engine(Path(args.engine), Path(args.onnx), args.plugin_lib, args.force, log=log)
    log(f"Done. Check it: flashvlm-export parity --engine {args.engine}")
    return 0


# ---------------------------------------------------------------- bench


def bench_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export bench",
        description=(
            "Measure what the selector costs and what pruning saves on this machine: selector core on every backend, "
            "the full graph in ONNX Runtime, the export, and (on a GPU) LLM prefill per budget. Writes bench.json and bench.md."
        ),
    )
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure after warm-up, 1-1000 (default: 10)")
    p.add_argument(
        "--text-len",
        type=int,
        default=60,
        help=f"prompt rows of the {LLAVA15.t_max} (default: 60, a LLaVA-1.5 chat prompt)",
    )
    p.add_argument("--out-dir", default="bench-results", help="where bench.json and bench.md go (default: bench-results)")
    p.add_argument("--no-export", action="store_true", help="skip the export measurement (and the full graph, which uses it)")
    p.add_argument("--no-full-graph", action="store_true", help="skip the full-graph ONNX Runtime timing")
    p.add_argument("--no-gpu", action="store_true", help="ignore a CUDA GPU even when present")
    p.add_argument("--no-split", action="store_true", help="skip fused graphs against a split export (time, disk, memory)")
    p.add_argument(
        "--split-only", action="store_true", help="only fused graphs against a split export (~7 min, ~8 GB of scratch disk)"
    )
    p.add_argument("--cost-only", action="store_true", help="print the FLOPs / KV-cache calculator and stop")
    return p


MAX_BENCH_REPEATS = 1000  # ~20 min of N=2880 timings on 2 cores; more measures nothing new


def run_bench(argv: list[str]) -> int:
    from flashvlm_export.bench.cost import cost_markdown, differences_text

    args = bench_parser().parse_args(argv)
    if args.cost_only:
        log(cost_markdown())
        log(differences_text())
        return 0
    if not 1 <= args.repeats <= MAX_BENCH_REPEATS:
        raise UsageError(f"--repeats {args.repeats} is out of range; use 1 <= repeats <= {MAX_BENCH_REPEATS}")
    if not 0 <= args.text_len <= LLAVA15.t_max:
        raise UsageError(f"--text-len {args.text_len} is out of range; use 0 <= text-len <= {LLAVA15.t_max} (T_max)")
    from flashvlm_export.artifacts.staging import check_writable
    from flashvlm_export.bench import suite
    from flashvlm_export.bench.run import run_bench as run_suite

    out_dir = Path(args.out_dir)
    check_writable([out_dir / "bench.json", out_dir / "bench.md"], force=True, log=log)  # before minutes of work
    if args.split_only and args.no_split:
        raise UsageError("--split-only and --no-split exclude each other; pass one")
    only = args.split_only
    settings = suite.BenchSettings(
        args.repeats,
        2,
        args.text_len,
        full_graph=not args.no_full_graph and not only,
        export=not args.no_export and not only,
        gpu=not args.no_gpu and not only,
        split=not args.no_split,
        selector=not only,
    )
    run_suite(settings, out_dir, "flashvlm-export bench " + " ".join(argv), log=log)
    return 0


# ---------------------------------------------------------------- run


def run_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export run",
        description=(
            "A photo and a question through an exported graph: the kept tokens and the selection time, "
            "optionally a heatmap of them and the LLM's answer with the K kept tokens (and with all N)."
        ),
    )
    s = p.add_argument_group("selection")
    s.add_argument("--graph", metavar="PATH", help="full graph from flashvlm-export; its metadata names the model and weights")
    s.add_argument(
        "--engine",
        metavar="PLAN",
        help="run this TensorRT engine instead (its sidecar names the graph); needs TensorRT and a GPU",
    )
    s.add_argument(
        "--manifest",
        metavar="JSON",
        help="a split export's manifest: its encoder, then the selector of --budget (no host copy in between)",
    )
    s.add_argument("--budget", type=int, metavar="K", help="with --manifest: which of its budgets this request keeps")
    s.add_argument("--tensorrt", action="store_true", help="with --manifest: run its TensorRT engines (needs TensorRT and a GPU)")
    s.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so for an engine built with --plugin")
    i = p.add_argument_group("input")
    i.add_argument("--image", metavar="FILE", help="any picture Pillow reads")
    i.add_argument(
        "--demo-image", metavar="FILE", help="write a synthetic picture (the repository's demo) to FILE and use it as --image"
    )
    i.add_argument("--question", required=True, help="the question about the image")
    w = p.add_argument_group("weights (default: the ones the graph records)")
    w.add_argument("--model-path", metavar="DIR", help="local checkpoint the graph was exported from")
    w.add_argument(
        "--random-weights", action="store_true", help="the graph's seeded random weights (stand-in tokenizer; answers are noise)"
    )
    w.add_argument("--seed", type=int, help="seed of --random-weights; must be the graph's (default: the graph's)")
    o = p.add_argument_group("output")
    o.add_argument("--heatmap", metavar="PNG", help="write the kept tokens over the image beside S_int, S_ext and F")
    o.add_argument("--answer", action="store_true", help="answer with the LLM from the K kept visual tokens")
    o.add_argument(
        "--compare-full", action="store_true", help="also answer with all N tokens: both answers, prefill times, KV caches"
    )
    o.add_argument("--max-new-tokens", type=int, default=64, help="greedy answer length at most (default: 64)")
    o.add_argument("--force", action="store_true", help="overwrite an existing --heatmap or --demo-image")
    return p


def run_run(argv: list[str]) -> int:
    from flashvlm_export.runtime.api import run, write_demo_image

    args = run_parser().parse_args(argv)
    if (args.image is None) == (args.demo_image is None):
        raise UsageError("pass one of --image FILE or --demo-image FILE")
    image = args.image or write_demo_image(args.demo_image, args.force, log=log)
    run(
        args.graph,
        image,
        args.question,
        model_path=args.model_path,
        random_weights=args.random_weights,
        seed=args.seed,
        engine=args.engine,
        plugin_lib=args.plugin_lib,
        manifest=args.manifest,
        budget=args.budget,
        tensorrt=args.tensorrt,
        heatmap=args.heatmap,
        answer=args.answer,
        compare_full=args.compare_full,
        max_new_tokens=args.max_new_tokens,
        force=args.force,
        log=log,
    )
    return 0


# ---------------------------------------------------------------- entry point

SUBCOMMANDS = {
    "parity": run_parity_command,
    "build-plugin": run_build_plugin,
    "bench": run_bench,
    "sidecar": run_sidecar,
    "run": run_run,
}


INSTALL_HINTS = {
    "onnxruntime": "pip install -e '.[cpu]' (or '.[gpu]' on a CUDA host: onnxruntime-gpu, never both)",
    "onnxruntime_extensions": "pip install -e '.[plugin-ort]'",
}


def _error(message: str) -> None:
    print(f"flashvlm-export: error: {message}", file=sys.stderr, flush=True)


def _in_chain(exc: BaseException, kinds) -> BaseException | None:
    """The first exception of `kinds` among exc, its causes and contexts (exporters wrap what they catch)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kinds):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _interrupted(exc: BaseException) -> int:
    if isinstance(exc, Terminated):
        print("flashvlm-export: terminated (SIGTERM); no partial files were kept", file=sys.stderr, flush=True)
        return Terminated.exit_code
    print("flashvlm-export: interrupted; no partial files were kept", file=sys.stderr, flush=True)
    return 130


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the cleanup that follows runs once, undisturbed
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if main_thread else None
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        return run_export(argv)
    except ParityError:
        return ParityError.exit_code
    except FlashVLMError as exc:
        _error(str(exc))
        return exc.exit_code
    except (KeyboardInterrupt, Terminated) as exc:
        return _interrupted(exc)
    except Exception as exc:
        interrupt = _in_chain(exc, (KeyboardInterrupt, Terminated))
        if interrupt is not None:
            return _interrupted(interrupt)
        missing = _in_chain(exc, ModuleNotFoundError)
        if missing is not None and missing.name:
            top = missing.name.split(".")[0]
            _error(f"the Python module {top!r} is not installed; {INSTALL_HINTS.get(top, f'pip install {top}')}")
            return 2
        ours = _in_chain(exc, FlashVLMError)
        if ours is not None:
            _error(str(ours))
            return ours.exit_code
        os_error = _in_chain(exc, OSError)
        if os_error is not None:  # the OS refused a path or a write: environmental, one line
            where = f" {os_error.filename}" if getattr(os_error, "filename", None) else ""
            _error(f"{os_error.strerror or os_error}{where}; check the path, its permissions and free space")
            return 2
        raise
    finally:
        if main_thread and previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
