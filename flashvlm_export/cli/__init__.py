"""flashvlm-export: export FlashVLM token selection as static ONNX graphs (and TensorRT engines).

flashvlm-export --model llava15 --budget 128 --random-weights     export graphs/llava15_b128.onnx
flashvlm-export parity --graph graphs/llava15_b128.onnx --random-weights

This package parses flags and dispatches: one module per command (commands.py lists them), whose
work lives in export/, parity/, runtime/, bench/, plugin/ and trt/. Only the chosen command's module
is imported, and nothing heavy (torch, onnx) before it runs, so --help is instant.
"""

from __future__ import annotations

import importlib
import sys

from flashvlm_export.cli.commands import module_of
from flashvlm_export.cli.guard import guarded
from flashvlm_export.errors import cli_spelling


def dispatch(argv: list[str]) -> int:
    """A first word that is not a flag names the command; without one, the arguments are an export's."""
    if argv and not argv[0].startswith("-"):
        return importlib.import_module(f"flashvlm_export.cli.{module_of(argv[0])}").main(argv[1:])
    return importlib.import_module("flashvlm_export.cli.export").main(argv)


@cli_spelling()  # errors name flags (--force), not the Python API's keyword arguments (force=True)
def main(argv: list[str] | None = None) -> int:
    return guarded(dispatch, list(sys.argv[1:] if argv is None else argv))
