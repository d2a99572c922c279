"""flashvlm-export triton: a Triton Inference Server model repository from a split export's manifest (serve/)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, log


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} triton",
        description=(
            "Write a Triton model repository for a split export: an entry model `flashvlm` (pixel_values, text_embeds, "
            "text_mask and a budget per image in; indices, visual_embeds out). The manifest's hashes are checked first "
            "(docs/TRITON.md)."
        ),
    )
    p.add_argument("--manifest", metavar="PATH", required=True, help="the split export's manifest.json (or its folder)")
    p.add_argument("--out", metavar="DIR", required=True, help="the model repository folder to write")
    p.add_argument(
        "--flavour",
        choices=("cpu", "onnx", "tensorrt"),
        default="cpu",
        help="cpu: the chain as one Python-backend model, ONNX Runtime inside (default; serves anywhere); "
        "onnx: onnxruntime_onnx models chained by a Python BLS entry; tensorrt: the manifest's engines as tensorrt_plan models",
    )
    p.add_argument("--plugin-lib", metavar="PATH", help="libflashvlm_plugins.so, for the tensorrt flavour of --plugin engines")
    p.add_argument(
        "--instances", type=int, default=1, metavar="N", help="instances of each model (instance_group count; default 1)"
    )
    p.add_argument(
        "--python-path",
        metavar="DIRS",
        help="folders (os.pathsep-separated) the Python-backend models import flashvlm_export, numpy and onnxruntime from "
        "(default: this environment's; '' to rely on the server's PYTHONPATH)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    return p


def main(argv: list[str]) -> int:
    from flashvlm_export.serve.repository import write_repository

    args = parser().parse_args(argv)
    plugin = Path(args.plugin_lib) if args.plugin_lib else None
    out = write_repository(
        Path(args.manifest),
        Path(args.out),
        args.flavour,
        args.force,
        plugin,
        args.instances,
        log=log,
        python_path=args.python_path,
    )
    log(f"Serve it: tritonserver --model-repository {out}   (docs/TRITON.md)")
    return 0
