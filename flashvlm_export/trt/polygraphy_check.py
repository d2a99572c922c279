"""Replay saved parity records against an engine with Polygraphy's own CLI (`polygraphy run --trt`)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PolygraphyReplay:
    backend: str
    ok: bool
    output: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return self.ok

    def lines(self) -> list[str]:
        return [f"{self.backend}: {'PASSED' if self.ok else 'FAILED'}"] + self.output[-5:]


def polygraphy_command(engine: Path, inputs: Path, outputs: Path, plugin_lib: str | None) -> list[str]:
    exe = shutil.which("polygraphy") or str(Path(sys.executable).with_name("polygraphy"))
    command = [exe, "run", str(engine), "--trt", "--load-inputs", str(inputs), "--load-outputs", str(outputs)]
    return command + (["--plugins", str(plugin_lib)] if plugin_lib else [])


def replay_with_polygraphy(engine: Path, save_dir: Path, stem: str, plugin_lib: str | None, log=print) -> PolygraphyReplay:
    """Exact comparison of the engine's indices with the reference outputs (near-ties count as failures here)."""
    from flashvlm_export.artifacts import read_sidecar
    from flashvlm_export.plugin.build import find_plugin_library

    if read_sidecar(engine).get("plugin"):
        plugin_lib = str(find_plugin_library(plugin_lib))
    command = polygraphy_command(
        engine, save_dir / f"{stem}_inputs.json", save_dir / f"{stem}_reference_outputs.json", plugin_lib
    )
    log(f"Parity: {' '.join(command)}")
    run = subprocess.run(command, capture_output=True, text=True)
    report = PolygraphyReplay("polygraphy run --trt", run.returncode == 0, (run.stdout + run.stderr).strip().splitlines())
    for line in report.lines():
        log(f"  {line}")
    return report
