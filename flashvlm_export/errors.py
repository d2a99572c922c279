"""One error family. Every message states the bad value and the fix; the CLI prints it on one line, exit 2."""

import contextlib
import contextvars


class FlashVLMError(Exception):
    """Base class for errors the CLI reports as one line with exit code 2."""

    exit_code = 2


class UsageError(FlashVLMError):
    """Bad user input: a flag, a file, a shape or a value."""


class MissingDependencyError(FlashVLMError):
    """An optional dependency (TensorRT, a GPU, a plugin library, a compiler) is not available."""


class BuildError(FlashVLMError):
    """A build step that was run failed (the plugin's CMake/nvcc build, the CPU twin's g++ build)."""


class ParityError(FlashVLMError):
    """A backend failed parity layer 1 or 2 (or the --min-overlap gate); the report says which."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so every `finally` cleans up; the CLI exits 143."""

    exit_code = 143


# How an error names an argument. The same check runs under the CLI (flags) and the Python API (keyword
# arguments): a message built with `arg`/`switch` says `--heatmap x.png` to the one and `heatmap='x.png'` to the other.
# Python is the default; the CLI's main() runs under `cli_spelling()`.
_CLI_SPELLING = contextvars.ContextVar("flashvlm_export_cli_spelling", default=False)


@contextlib.contextmanager
def cli_spelling():
    """Errors raised inside name flags (`--force`), not keyword arguments (`force=True`); a decorator too."""
    token = _CLI_SPELLING.set(True)
    try:
        yield
    finally:
        _CLI_SPELLING.reset(token)


def arg(name: str, value: object = None) -> str:
    """An argument by its Python name: `--max-new-tokens 0` on the command line, `max_new_tokens=0` from Python."""
    if _CLI_SPELLING.get():
        flag = "--" + name.replace("_", "-")
        return flag if value is None else f"{flag} {value}"
    return f"{name}=" if value is None else f"{name}={value!r}"


def switch(name: str) -> str:
    """A boolean argument turned on: `--force` on the command line, `force=True` from Python."""
    return "--" + name.replace("_", "-") if _CLI_SPELLING.get() else f"{name}=True"


def nearest(word: str, names) -> str | None:
    """The name a typo most likely meant: the fewest single-character edits (Levenshtein), ignoring case, the first
    listed on a tie; None when even that one is too far to be a typo (more than max(2, half its length) edits)."""

    def edits(a: str, b: str) -> int:
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        return row[-1]

    names = list(names)
    if not names:
        return None
    distance = {name: edits(word.strip().casefold(), name.casefold()) for name in names}
    best = min(names, key=distance.get)
    return best if distance[best] <= max(2, len(best) // 2) else None
