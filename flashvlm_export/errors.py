"""One error family. Every message states the bad value and the fix; the CLI prints it on one line, exit 2."""


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
