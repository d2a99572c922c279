"""flashvlm-export parity: a graph, engine or split export against the PyTorch reference (parity/job.py does it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import (
    Parser,
    add_backend_flag,
    add_graph_flags,
    add_model_flags,
    add_selector_flags,
    given_flags,
    log,
    selector_config,
)
from flashvlm_export.errors import ParityError, UsageError


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} parity",
        description=(
            "Parity of an exported graph (or engine) with the PyTorch reference, in the three layers of "
            "docs/ALGORITHM.md: decisions exact, arithmetic within stated bounds, outcome overlap beside the "
            "reference's own sensitivity. Exit 0 when layers 1 and 2 hold (and the --min-overlap gate, if given)."
        ),
    )
    p.add_argument(
        "--graph", metavar="PATH", help="graph to check; default: export a selector graph for --model/--budget to a temp dir"
    )
    p.add_argument(
        "--engine",
        metavar="PLAN",
        help="also check this TensorRT engine against the graph it was built from (--graph; a split's engine finds it in the split folder); needs TensorRT and a GPU",
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
    add_backend_flag(p, "the graph (a split: its chain) beside static torch")
    add_model_flags(p)
    # flags that describe a graph to export: moot (and refused) when --graph, --engine or --manifest names one
    p.set_defaults(graph_defining=["--model", *add_graph_flags(p, many_budgets=False), *add_selector_flags(p)])
    c = p.add_argument_group("corpus and records")
    c.add_argument(
        "--corpus-seed", type=int, default=0, help="seed of the parity corpus and of the sensitivity noise (default: 0)"
    )
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


def _check_flags(args, given: set[str]) -> None:
    if args.polygraphy and not args.engine:
        raise UsageError("--polygraphy replays the records against an engine; pass --engine PLAN or drop --polygraphy")
    if args.manifest and (args.graph or args.engine or args.load_inputs):
        raise UsageError("--manifest names its own graphs and runs the pipeline corpus; drop --graph/--engine/--load-inputs")
    if args.graph or args.engine or args.manifest:
        moot = sorted(given & set(args.graph_defining))
        if moot:
            named = "--graph" if args.graph else "--engine" if args.engine else "--manifest"
            raise UsageError(
                f"{', '.join(moot)} cannot apply: {named} names an exported artifact whose metadata fixes them; drop them"
            )


def main(argv: list[str]) -> int:
    from flashvlm_export.parity.job import NamedWeights, ParitySettings, check_graph, check_manifest

    args = parser().parse_args(argv)
    given = given_flags(argv)
    save_dir = None if args.no_save else Path(args.save_dir)
    settings = ParitySettings(args.corpus_seed, args.repeats, save_dir, args.min_overlap, args.backend)
    _check_flags(args, given)
    weights = NamedWeights(args.random_weights, args.seed if "--seed" in given else None, args.model_path)
    if args.manifest:
        passed = check_manifest(Path(args.manifest), settings, weights, log=log)
    else:
        scratch = None
        if not (args.graph or args.engine):  # a selector graph of the flags, exported for the check
            from flashvlm_export.export.requests import export_requests
            from flashvlm_export.models.registry import get_spec

            _, (scratch,) = export_requests(
                args.model,
                args.budget,
                config=selector_config(args, get_spec(args.model)),
                t_max=args.t_max,
                batch=args.batch,
                image_size=args.image_size,
                grid=args.grid,
                selector_only=True,
                n_tokens=args.n_tokens,
                one_budget=True,
                budget_range=args.budget_range,
            )
        passed = check_graph(
            Path(args.graph) if args.graph else None,
            settings,
            weights,
            scratch_request=scratch,
            engine=Path(args.engine) if args.engine else None,
            plugin_lib=args.plugin_lib,
            polygraphy=args.polygraphy,
            load_inputs=Path(args.load_inputs) if args.load_inputs else None,
            log=log,
        )
    if not passed:
        raise ParityError("parity failed")
    return 0
