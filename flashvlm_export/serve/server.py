"""A local tritonserver on 127.0.0.1 for tests and measurements: found, started on free ports, stopped always.

The binary: $FLASHVLM_TRITONSERVER (its backends beside it, ../backends), else the cache scripts/fetch_triton.sh
fills ($FLASHVLM_TRITON_CACHE, default ~/.cache/flashvlm-export/triton: nvidia-pytriton 0.7.0's wheel unzipped, and
tritonclient in client/). The Python backend's stub loads libpython3.11: the running interpreter's lib dir goes on
LD_LIBRARY_PATH, with the wheel's bundled libraries.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FLASHVLM_TRITON_CACHE", Path.home() / ".cache" / "flashvlm-export" / "triton"))


def find_tritonserver() -> tuple[Path | None, str]:
    """(the tritonserver binary, "") or (None, why not)."""
    given = os.environ.get("FLASHVLM_TRITONSERVER")
    binary = Path(given) if given else cache_dir() / "wheel" / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not os.access(binary, os.X_OK):
        where = "$FLASHVLM_TRITONSERVER" if given else f"{cache_dir()} (scripts/fetch_triton.sh fills it)"
        return None, f"no tritonserver binary at {binary}: set {where}"
    stub = binary.parents[1] / "backends" / "python" / "triton_python_backend_stub"
    if not os.access(stub, os.X_OK):
        return None, f"no Python backend stub at {stub} (scripts/fetch_triton.sh copies the 3.11 one there)"
    return binary, ""


def import_tritonclient() -> str:
    """ "" when tritonclient imports (from this environment, else the cache's client/, put last on sys.path); else why not."""
    client = cache_dir() / "client"
    if client.is_dir() and str(client) not in sys.path:
        sys.path.append(str(client))
    try:
        import tritonclient.grpc  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as exc:
        return f"tritonclient[http,grpc] does not import ({exc}); scripts/fetch_triton.sh installs it into {client}"
    return ""


def require_tritonclient() -> None:
    """Make `import tritonclient` work as import_tritonclient() does (this environment's, else the fetched one), or
    raise a MissingDependencyError saying how to get it: the first line of a client script (docs/TRITON.md)."""
    why = import_tritonclient()
    if why:
        from flashvlm_export.errors import MissingDependencyError

        raise MissingDependencyError(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TritonServer:
    """tritonserver on 127.0.0.1 serving `repository`; a context manager that always kills its process group."""

    def __init__(self, binary: Path, repository: Path, log_path: Path, ready_s: float = 60.0):
        self.binary, self.repository, self.log_path, self.ready_s = Path(binary), Path(repository), Path(log_path), ready_s
        self.http_port, self.grpc_port = free_port(), free_port()
        self.process = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> TritonServer:
        env = dict(os.environ)
        libs = [sysconfig.get_config_var("LIBDIR") or "", str(self.binary.parents[3] / "nvidia_pytriton.libs")]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep)
        command = [
            str(self.binary), "--model-repository", str(self.repository),
            "--backend-directory", str(self.binary.parents[1] / "backends"),
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--allow-metrics", "false", "--exit-timeout-secs", "5",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + self.ready_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.process.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=1) as answer:
                    if answer.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"tritonserver was not ready in {self.ready_s:.0f} s: {self.tail()}")

    def tail(self, lines: int = 8) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """SIGTERM the server's process group (the server and its Python stubs), SIGKILL after 10 s."""
        if self.process is None:
            return
        for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
            if self.process.poll() is not None:
                break  # the server is gone; its Python stubs may not be: the group is killed below
            try:
                os.killpg(self.process.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.process.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # a Python stub the server left behind
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
