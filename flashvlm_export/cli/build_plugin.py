"""flashvlm-export build-plugin: libflashvlm_plugins.so with CMake and nvcc (plugin/build.py does it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flashvlm_export.cli.commands import PROG
from flashvlm_export.cli.flags import Parser, log
from flashvlm_export.plugin.build import DEFAULT_BUILD_DIR


def parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=f"{PROG} build-plugin",
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


def main(argv: list[str]) -> int:
    from flashvlm_export.plugin.build import build_plugin

    args = parser().parse_args(argv)
    library = build_plugin(args.tensorrt_include, Path(args.build_dir), args.cuda_arch, log=log)
    log(f"Done. Use it: {PROG} ... --engine --plugin --plugin-lib {library}  (or export FLASHVLM_PLUGIN_LIB={library})")
    return 0
