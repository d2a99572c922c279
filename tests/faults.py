"""Fault injection for the hardening tests: real faults in a child process, no mocked file system.

- `run_cli(..., file_size_limit=N)`: the CLI in a child whose writes fail once a file passes N bytes
  (RLIMIT_FSIZE with SIGXFSZ ignored, so write(2) returns EFBIG), as on a disk that fills up mid-write.
  What it does not prove: ENOSPC itself (the same code path maps it; a full tmpfs is not available here).
- `start_cli` + `wait_for_staging` + a signal: the CLI stopped in the middle of an export.
- `killed_writer(folder)`: a child that stages half a file through `atomic_outputs`, then is SIGKILLed:
  the staging folder an interrupted run leaves behind.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGING = ".flashvlm-tmp-"


def _env(extra: dict | None = None) -> dict:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, **(extra or {})}


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # inherited across exec: writes fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def run_cli(*args: str, cwd: Path, file_size_limit: int | None = None, env: dict | None = None, timeout: float = 300):
    command = [sys.executable, "-m", "flashvlm_export.cli", *args]
    limit = _limit_file_size(file_size_limit) if file_size_limit is not None else None
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env=_env(env), preexec_fn=limit, timeout=timeout)


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "flashvlm_export.cli", *args]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())


def staging_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(STAGING)) if folder.exists() else []


def wait_for_staging(folder: Path, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The staging folder of a running export, once it exists (the export is then under way)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in staging_folders(folder) if p.is_dir()]
        if found:
            return found[0]
        if process.poll() is not None:
            raise AssertionError(f"the export ended before it staged anything: {process.communicate()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError("no staging folder appeared")


def killed_writer(folder: Path, payload: int = 1 << 20) -> Path:
    """SIGKILL a child half-way through writing a graph via atomic_outputs; returns the staging folder it left."""
    script = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from flashvlm_export.artifacts.placement import atomic_outputs
        folder = Path({str(folder)!r})
        with atomic_outputs([folder / "g.onnx", folder / "g.json"], overwrite=False) as (graph, sidecar):
            with open(graph, "wb") as f:
                f.write(b"\\0" * {payload})
                f.flush()
                print("writing", flush=True)
                time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_env())
    assert child.stdout.readline().strip() == "writing"
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    (left,) = staging_folders(folder)
    return left
