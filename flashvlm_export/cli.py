"""flashvlm-export: export FlashVLM token selection as static ONNX graphs (and TensorRT engines).

flashvlm-export --model llava15 --budget 128 --random-weights     export graphs/llava15_b128.onnx
flashvlm-export parity --graph graphs/llava15_b128.onnx --random-weights
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from flashvlm_export import __version__
from flashvlm_export.errors import FlashVLMError, ParityError, UsageError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        raise UsageError(f"{message}; see {self.prog} --help")


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- shared flags


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and weights")
    g.add_argument("--model", default="llava15", help="model spec name (default: llava15; llava15-tiny is a test-size model)")
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
        + ("; a comma list exports several from one model load" if many_budgets else ""),
    )
    g.add_argument("--t-max", type=int, help="padded text rows T_max of the static graph (default: the model's, 128 for llava15)")
    g.add_argument("--batch", type=int, default=1, help="static batch size B (default: 1)")
    g.add_argument("--image-size", type=int, help="input image side; must equal the model's (336 for llava15)")
    g.add_argument("--selector-only", action="store_true", help="export the selection core alone (inputs X, a, P(X), T, mask)")
    g.add_argument(
        "--n-tokens", type=int, help="with --selector-only: visual tokens N per image if not the model's (own encoder, video)"
    )


def _add_selector_flags(p: argparse.ArgumentParser) -> None:
    from flashvlm_export.selector.config import GATES, SelectorConfig

    d = SelectorConfig()
    g = p.add_argument_group("selector hyperparameters (shared/ALGORITHM.md; defaults are the authors')")
    g.add_argument("--eta", type=float, default=d.eta, help=f"log-fusion weight of the text score (default: {d.eta})")
    g.add_argument(
        "--text-temperature",
        type=float,
        default=d.text_temperature,
        help=f"softmax temperature over text tokens (default: {d.text_temperature})",
    )
    g.add_argument(
        "--patch-temperature",
        type=float,
        default=d.patch_temperature,
        help=f"softmax temperature over patches (default: {d.patch_temperature})",
    )
    g.add_argument("--power", type=float, default=d.power, help=f"power-law sharpening exponent (default: {d.power})")
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"top-p gate keeps q >= quantile(1 - top_p) (default: {d.top_p})")
    g.add_argument(
        "--attenuation", type=float, default=d.attenuation, help=f"factor on q below the gate (default: {d.attenuation})"
    )
    g.add_argument(
        "--important-ratio",
        type=float,
        default=d.important_ratio,
        help=f"K_imp = floor(ratio * K) (default: {d.important_ratio})",
    )
    g.add_argument("--step", type=int, default=d.step, help=f"tokens pruned per round at most (default: {d.step})")
    g.add_argument(
        "--max-rounds", type=int, default=d.max_rounds, help="cap on pruning rounds; raises --step to fit (default: no cap)"
    )
    g.add_argument("--gate", choices=GATES, default=d.gate, help=f"query gating (default: {d.gate})")


def _selector_config(args):
    from flashvlm_export.selector.config import SelectorConfig

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


def _requests(args, many_budgets: bool):
    from flashvlm_export.export.graphs import ExportRequest
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
    budgets = _budgets(args.budget, n_tokens, spec.name)
    if not many_budgets and len(budgets) > 1:
        raise UsageError(f"--budget {args.budget}: this command takes one budget")
    config = _selector_config(args)
    plugin, precision = getattr(args, "plugin", False), getattr(args, "precision", "fp32")
    if args.selector_only and precision != "fp32":
        raise UsageError(f"--precision {precision} applies to the encoder; a --selector-only graph is always fp32, drop one")
    return spec, [
        ExportRequest(spec, k, t_max, args.batch, config, args.selector_only, args.n_tokens, plugin, precision) for k in budgets
    ]


def _load_parts(spec, args, weights_meta: str | None = None):
    from flashvlm_export.artifacts import StepTimer
    from flashvlm_export.models.llava import get_parts

    random_weights, seed, model_path = args.random_weights, args.seed, args.model_path
    if not random_weights and model_path is None and weights_meta and weights_meta.startswith("random:"):
        random_weights, seed = True, int(weights_meta.split(":", 1)[1])  # rebuild the graph's own weights
    timer = StepTimer("Model")
    parts = get_parts(spec, model_path, random_weights, seed)
    timer.done(f"loaded {spec.name} ({parts.source})")
    return parts


def _weights_tag(parts) -> str:
    return f"random:{parts.source.rsplit(' ', 1)[-1]}" if parts.source.startswith("random") else parts.source


# ---------------------------------------------------------------- export (the main job)


def export_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flashvlm-export",
        description="Export the vision encoder, projector and FlashVLM selector as one static-shape ONNX graph.",
        epilog=(
            "subcommands: flashvlm-export parity --help (token-index parity against the PyTorch reference); "
            "flashvlm-export build-plugin --help (build the ResidualPrune TensorRT plugin); "
            "flashvlm-export bench --help (measured costs on this machine)"
        ),
    )
    p.add_argument("--version", action="version", version=f"flashvlm-export {__version__}")
    _add_model_flags(p)
    _add_graph_flags(p, many_budgets=True)
    _add_selector_flags(p)
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="PATH", help="graph file (one budget only); default: graphs/<model>[_selector]_b<K>.onnx")
    o.add_argument("--out-dir", metavar="DIR", default="graphs", help="folder for default-named graphs (default: graphs)")
    o.add_argument("--force", action="store_true", help="overwrite existing graphs and sidecars")
    o.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17 (default: 18)")
    o.add_argument(
        "--exporter", choices=("dynamo", "torchscript"), default="dynamo", help="torch.onnx exporter (default: dynamo)"
    )
    t = p.add_argument_group("deployment")
    t.add_argument(
        "--precision",
        choices=("fp32", "fp16", "bf16"),
        default="fp32",
        help="vision encoder + projector precision, as explicit casts in the graph; the selector always runs in fp32",
    )
    t.add_argument(
        "--plugin", action="store_true", help="replace the unrolled pruning rounds by one flashvlm::ResidualPrune plugin node"
    )
    t.add_argument("--engine", action="store_true", help="also build a TensorRT engine from the graph (needs TensorRT and a GPU)")
    t.add_argument("--engine-dir", metavar="DIR", default="engines", help="folder for engines (default: engines)")
    t.add_argument(
        "--timing-cache", metavar="PATH", help="TensorRT timing cache, saved and reused (default: <engine-dir>/timing.cache)"
    )
    t.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so (default: $FLASHVLM_PLUGIN_LIB or build/plugin/)")
    t.add_argument("--workspace", type=float, default=4.0, help="TensorRT workspace limit in GiB (default: 4)")
    return p


def _graph_paths(args, requests) -> list[Path]:
    from flashvlm_export.artifacts import graph_name

    if args.out is not None:
        if len(requests) > 1:
            raise UsageError("--out names one file but --budget lists several; use --out-dir for several budgets")
        if not args.out.endswith(".onnx"):
            raise UsageError(f"--out {args.out} must end in .onnx")
        return [Path(args.out)]
    return [Path(args.out_dir) / graph_name(r) for r in requests]


def run_export(argv: list[str]) -> int:
    from flashvlm_export.artifacts import StepTimer, check_writable
    from flashvlm_export.export.graphs import export_graph

    args = export_parser().parse_args(argv)
    if args.plugin and args.exporter != "dynamo":
        raise UsageError(
            f"--plugin needs the dynamo exporter (its custom node does not export with {args.exporter}); drop --exporter"
        )
    if args.opset < 17:
        raise UsageError(f"--opset {args.opset} is too old: LayerNormalization needs 17; use --opset 17 or newer")
    spec, requests = _requests(args, many_budgets=True)
    paths = _graph_paths(args, requests)
    engines, plugin_lib = [], None
    if args.engine:  # fail fast, before the export, when TensorRT, the GPU or the plugin is missing
        from flashvlm_export.artifacts import artifact_stem
        from flashvlm_export.device import gpu_info
        from flashvlm_export.trt.env import import_tensorrt

        import_tensorrt()
        gpu_info()
        if args.plugin:
            from flashvlm_export.plugin.build import find_plugin_library

            plugin_lib = find_plugin_library(args.plugin_lib)
        engines = [Path(args.engine_dir) / f"{artifact_stem(r)}.plan" for r in requests]
    check_writable(paths + engines, args.force)
    parts = None if args.selector_only else _load_parts(spec, args)
    weights = None if parts is None else _weights_tag(parts)
    for request, path in zip(requests, paths, strict=True):
        timer = StepTimer("ONNX")
        export_graph(request, path, parts, weights, args.opset, args.exporter)
        timer.done(f"export success ({request.kind} graph, K={request.budget}, B={request.batch}, T_max={request.t_max})", path)
    for request, path, engine in zip(requests, paths, engines, strict=False):
        from flashvlm_export.trt.build import build_engine

        cache = Path(args.timing_cache) if args.timing_cache else Path(args.engine_dir) / "timing.cache"
        build_engine(path, engine, request.metadata(weights), request.precision, plugin_lib, cache, args.workspace, log=log)
    weights_flag = ""
    if parts is not None:
        weights_flag = " --random-weights" if weights.startswith("random") else f" --model-path {parts.source}"
    if engines:
        log(f"Done. Check it: flashvlm-export parity --engine {engines[0]}{weights_flag}")
    else:
        log(f"Done. Check it: flashvlm-export parity --graph {paths[0]}{weights_flag}")
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
    from flashvlm_export.parity.run import check_weights, graph_metadata, load_cases, run_parity

    args = parity_parser().parse_args(argv)
    if not 1 <= args.repeats <= MAX_PARITY_REPEATS:
        raise UsageError(f"--repeats {args.repeats} is out of range; use 1 to {MAX_PARITY_REPEATS}")
    if args.min_overlap is not None and not 0.0 <= args.min_overlap <= 1.0:
        raise UsageError(f"--min-overlap {args.min_overlap} is not a fraction; use a value in [0, 1]")
    if args.polygraphy and not args.engine:
        raise UsageError("--polygraphy replays the records against an engine; pass --engine PLAN or drop --polygraphy")
    if args.graph or args.engine:
        moot = sorted(_given_flags(argv) & set(GRAPH_DEFINING_FLAGS))
        if moot:
            named = "--graph" if args.graph else "--engine"
            raise UsageError(
                f"{', '.join(moot)} cannot apply: {named} names an exported artifact whose metadata fixes them; drop them"
            )
    save_dir = None if args.no_save else Path(args.save_dir)
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
        parts = None
        if not request.selector_only:
            check_weights(meta, args.random_weights, args.seed, args.model_path, str(graph))
            parts = _load_parts(request.spec, args, meta.get("weights"))
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
    p.add_argument("--build-dir", default="build/plugin", help="CMake build folder (default: build/plugin)")
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
    p.add_argument("--repeats", type=int, default=10, help="timed runs per figure after warm-up (default: 10)")
    p.add_argument("--text-len", type=int, default=60, help="prompt rows of the 128 (default: 60, a LLaVA-1.5 chat prompt)")
    p.add_argument("--out-dir", default="bench-results", help="where bench.json and bench.md go (default: bench-results)")
    p.add_argument("--no-export", action="store_true", help="skip the export measurement (and the full graph, which uses it)")
    p.add_argument("--no-full-graph", action="store_true", help="skip the full-graph ONNX Runtime timing")
    p.add_argument("--no-gpu", action="store_true", help="ignore a CUDA GPU even when present")
    p.add_argument("--cost-only", action="store_true", help="print the FLOPs / KV-cache calculator and stop")
    return p


def run_bench(argv: list[str]) -> int:
    from flashvlm_export.bench.cost import cost_markdown, differences_text

    args = bench_parser().parse_args(argv)
    if args.cost_only:
        log(cost_markdown())
        log(differences_text())
        return 0
    if args.repeats < 1 or not 0 <= args.text_len <= 128:
        raise UsageError(f"--repeats {args.repeats} must be >= 1 and --text-len {args.text_len} in [0, 128]")
    import torch

    from flashvlm_export.bench import report, suite

    settings = suite.BenchSettings(args.repeats, 2, args.text_len, not args.no_full_graph, not args.no_export, not args.no_gpu)
    results = {
        "machine": suite.machine(),
        "settings": settings.__dict__,
        "command": "flashvlm-export bench " + " ".join(argv),
        "rows": [],
    }
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="flashvlm-bench-") as scratch:
        if settings.export:
            log("Bench: export (child process)")
            results["rows"].append(suite.export_cost(Path(scratch), log=log))
        log("Bench: selector core")
        results["rows"] += suite.selector_core(settings, log=log)
        if settings.export and settings.full_graph:
            log("Bench: full graph")
            ort_ms = next(
                r["median_ms"]
                for r in results["rows"]
                if r.get("name") == "onnxruntime CPU" and r.get("n_tokens") == 576 and r.get("budget") == 128
            )
            results["rows"].append(suite.full_graph(Path(scratch) / "llava15_b128.onnx", ort_ms, settings, log=log))
    if settings.gpu and torch.cuda.is_available():
        log("Bench: LLM prefill on the GPU")
        results["rows"] += suite.prefill_gpu(settings, text_len=args.text_len, log=log)
    json_path, md_path = report.save(results, Path(args.out_dir))
    log(report.markdown(results))
    log(f"Bench: done {time.perf_counter() - start:.0f}s, saved {json_path} and {md_path}")
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return SUBCOMMANDS[argv[0]](argv[1:])
        return run_export(argv)
    except ParityError:
        return ParityError.exit_code
    except FlashVLMError as exc:
        print(f"flashvlm-export: error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("flashvlm-export: interrupted; no partial files were kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
