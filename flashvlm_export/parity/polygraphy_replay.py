"""Replay saved parity records against an engine with Polygraphy's own CLI (`polygraphy run --trt`).

Polygraphy's `--plugins` is a plain `ctypes.CDLL(path)` before anything imports tensorrt
(polygraphy/backend/trt/loader.py, LoadPlugins.call_impl, on release/10.3 and release/11.1 and in
Polygraphy 0.53): it never calls getCreators. So the replay passes libflashvlm_plugins_register.so,
which registers the creator at load time, not libflashvlm_plugins.so (whose only entry point is
getCreators, for IPluginRegistry::loadLibrary). The registering library opens libnvinfer by its
soname; when TensorRT comes from pip (tensorrt_libs), that package's folder goes first on
LD_LIBRARY_PATH, so the library it opens is the very file `import tensorrt` loads afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from flashvlm_export.errors import MissingDependencyError

REGISTER_LIBRARY_NAME = "libflashvlm_plugins_register.so"


@dataclass
class PolygraphyReplay:
    backend: str
    ok: bool
    output: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def lines(self) -> list[str]:
        return [f"{self.backend}: {'PASSED' if self.ok else 'FAILED'}"] + self.output[-5:]


def registering_library(plugin_lib: Path) -> Path:
    """libflashvlm_plugins_register.so beside libflashvlm_plugins.so (CMake builds both into one folder)."""
    path = Path(plugin_lib).with_name(REGISTER_LIBRARY_NAME)
    if not path.is_file():
        raise MissingDependencyError(
            f"{path} not found: polygraphy --plugins needs the registering library beside {Path(plugin_lib).name}; "
            "rebuild with flashvlm-export build-plugin"
        )
    return path


def tensorrt_libs_dir() -> str | None:
    """The folder of pip's tensorrt_libs (holds libnvinfer.so.N), found without importing tensorrt."""
    spec = importlib.util.find_spec("tensorrt_libs")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    return locations[0] if locations else None


def polygraphy_command(
    model: Path, inputs: Path, outputs: Path, register_lib: Path | None = None, runner: str = "--trt"
) -> list[str]:
    """`polygraphy run` over parity's records, judged by the project's verdict (parity/polygraphy_compare.py)."""
    from flashvlm_export.parity import polygraphy_compare

    exe = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    command = [exe, "run", str(model), runner, "--load-inputs", str(inputs), "--load-outputs", str(outputs)]
    command += ["--compare-func-script", polygraphy_compare.__file__]
    return command + (["--plugins", str(register_lib)] if register_lib else [])


def polygraphy_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the polygraphy process: tensorrt_libs' folder first on LD_LIBRARY_PATH, if any."""
    env = dict(os.environ if base is None else base)
    libs = tensorrt_libs_dir()
    if libs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [libs, env.get("LD_LIBRARY_PATH")]))
    return env


def replay_with_polygraphy(engine: Path, save_dir: Path, stem: str, plugin_lib: str | None, log=print) -> PolygraphyReplay:
    """Polygraphy's replay of the records against the engine, with the project's verdict (parity/polygraphy_compare.py):
    its index sets against the reference's beside the reference's own sensitivity; reported."""
    from flashvlm_export.artifacts.sidecar import read_sidecar
    from flashvlm_export.plugin.build import find_plugin_library

    register_lib = None
    if read_sidecar(engine).get("plugin"):
        register_lib = registering_library(find_plugin_library(plugin_lib))
    command = polygraphy_command(
        engine, save_dir / f"{stem}_inputs.json", save_dir / f"{stem}_reference_outputs.json", register_lib
    )
    log(f"Parity: {' '.join(command)}")
    run = subprocess.run(command, capture_output=True, text=True, env=polygraphy_env())
    report = PolygraphyReplay("polygraphy run --trt", run.returncode == 0, (run.stdout + run.stderr).strip().splitlines())
    for line in report.lines():
        log(f"  {line}")
    return report
