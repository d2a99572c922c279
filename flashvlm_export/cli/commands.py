"""The subcommands: each word, the module under flashvlm_export/cli/ that parses and runs it, and its one line."""

from __future__ import annotations

import importlib

from flashvlm_export.errors import UsageError, nearest

PROG = "flashvlm-export"
EXPORT_LINE = "export graphs (and engines): what runs when no command word is given"
COMMANDS = {
    "parity": ("parity", "token-index parity of a graph, engine or split export against the PyTorch reference"),
    "run": ("run", "a photo (or a clip) and a question through an exported graph: kept tokens, heatmap, the LLM's answer"),
    "bench": ("bench", "measured costs on this machine"),
    "eval": ("evaluate", "answer accuracy against the budget on a local benchmark (MMStar, MMBench, POPE, GQA, TextVQA)"),
    "sidecar": ("sidecar", "write the sidecar record of an engine trtexec built"),
    "build-plugin": ("build_plugin", "build the ResidualPrune TensorRT plugin"),
    "triton": ("triton", "a Triton Inference Server model repository from a split export's manifest"),
    "gguf": ("gguf", "a GGUF of a model's LLM for llama.cpp (run --answer --llm-runtime llama.cpp)"),
}


def usage() -> str:
    return f"{PROG} [options]   (export a graph)\n       {PROG} {{{','.join(COMMANDS)}}} [options]"


def listing() -> str:
    """Every command with its one line, for the top-level --help."""
    rows = [("(none)", EXPORT_LINE)] + [(name, line) for name, (_, line) in COMMANDS.items()]
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"  {name:<{width}}{line}" for name, line in rows]
    return f"commands ({PROG} COMMAND --help lists each one's flags):\n" + "\n".join(lines)


def module_of(word: str) -> str:
    """The module that runs `word`; a word that is no command is a one-line error with the nearest one."""
    if word in COMMANDS:
        return COMMANDS[word][0]
    near = nearest(word, COMMANDS)
    if near:
        raise UsageError(f"unknown command {word!r}; did you mean {near}?")
    raise UsageError(
        f"unknown command {word!r}; the commands are {', '.join(COMMANDS)}, and an export takes flags only ({PROG} --help)"
    )


def parsers() -> dict[str, object]:
    """Every command's argparse parser by its word ("" for the export), to check a command line without running it."""
    found = {"": importlib.import_module("flashvlm_export.cli.export").parser()}
    for word, (module, _) in COMMANDS.items():
        found[word] = importlib.import_module(f"flashvlm_export.cli.{module}").parser()
    return found
