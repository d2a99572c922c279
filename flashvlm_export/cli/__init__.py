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


def entry() -> None:
    """The process entry (the flashvlm-export script, python -m flashvlm_export.cli): main(), then exit with its code.

    After an interruption the line is printed and every cleanup has run; the process then ends with 130 / 143
    at once (os._exit). Going through interpreter shutdown instead, CPython may still end the process by SIGINT
    when a library it unwinds through had marked the KeyboardInterrupt unhandled (seen here: 1 run in ~10 of an
    interrupted dynamo export exited -2 after printing the line), which a shell sees as a different status.
    """
    import os

    from flashvlm_export.cli.guard import INTERRUPTED_CODES

    code = main()
    if code in INTERRUPTED_CODES:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
