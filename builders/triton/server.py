"""Start and stop the Triton server that ships inside ``nvidia-pytriton``, on loopback.

That build has only the python backend, so it serves the python-backend flavour of a
repository. Its python backend stub is linked against the running interpreter's
``libpython``, and the interpreter's site-packages go on its path so ``model.py`` finds
ONNX Runtime and numpy.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType


class TritonNotAvailableError(RuntimeError):
    """The Triton binary from nvidia-pytriton is not installed."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def triton_home() -> Path:
    """The ``tritonserver`` folder inside the installed nvidia-pytriton package."""
    try:
        import pytriton
    except ImportError as exc:
        raise TritonNotAvailableError("install the 'triton' extra (nvidia-pytriton)") from exc
    return Path(pytriton.__file__).parent / "tritonserver"


def prepare_backends(target: Path) -> Path:
    """Lay out a backend directory whose python backend has this interpreter's stub."""
    home = triton_home()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for item in (home / "backends" / "python").iterdir():
        if item.is_file() and not (python_dir / item.name).exists():
            (python_dir / item.name).symlink_to(item)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonNotAvailableError(f"no python backend stub for Python {version}")
    shutil.copy2(stub, python_dir / stub.name)
    return target


@dataclass
class TritonServer:
    """A running ``tritonserver`` on 127.0.0.1; use as a context manager."""

    repository: Path
    explicit: bool = False
    """Explicit model control: nothing loads until asked (``load_models`` or the API)."""
    load_models: tuple[str, ...] = ()
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    startup_timeout_s: float = 120.0
    extra_args: tuple[str, ...] = ()
    """More ``tritonserver`` options, e.g. ``--grpc-use-ssl=true`` and its certificates."""
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _workdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as tritonclient expects it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the gRPC endpoint."""
        return f"127.0.0.1:{self.grpc_port}"

    def command(self, backends: Path) -> list[str]:
        """The tritonserver command line."""
        cmd = [
            str(triton_home() / "bin" / "tritonserver"),
            f"--model-repository={self.repository}",
            f"--backend-directory={backends}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-timeout-secs=5",
        ]
        if self.explicit:
            cmd.append("--model-control-mode=explicit")
            cmd += [f"--load-model={name}" for name in self.load_models]
        return cmd + list(self.extra_args)

    def start(self) -> TritonServer:
        """Start the server and wait until it is ready (all requested models loaded)."""
        self._workdir = tempfile.TemporaryDirectory(prefix="triton-")
        backends = prepare_backends(Path(self._workdir.name) / "backends")
        env = dict(os.environ)
        # The stub finds libpython in the interpreter's LIBDIR and its CUDA runtime stubs in
        # nvidia_pytriton.libs (its RPATH is relative to where the wheel installed it).
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        bundled = str(triton_home().parent.parent / "nvidia_pytriton.libs")
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            p for p in (libdir, bundled, env.get("LD_LIBRARY_PATH", "")) if p
        )
        site = sysconfig.get_paths()["purelib"]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (site, env.get("PYTHONPATH", "")) if p)
        log = self.log_path or Path(self._workdir.name) / "triton.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                self.command(backends),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.log_path = log
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"tritonserver not ready in {self.startup_timeout_s} s:\n{tail}")

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop gracefully (SIGTERM), killing the process group if it does not exit in time."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
