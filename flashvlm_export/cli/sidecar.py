"""flashvlm-export sidecar: the sidecar record of an engine trtexec built (trt/sidecar.py writes it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, log


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} sidecar",
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


def main(argv: list[str]) -> int:
    from flashvlm_export.trt.sidecar import record_trtexec_engine

    args = parser().parse_args(argv)
    record_trtexec_engine(Path(args.engine), Path(args.onnx), args.plugin_lib, args.force, log=log)
    log(f"Done. Check it: {PROG} parity --engine {args.engine} --graph {args.onnx}")
    return 0
