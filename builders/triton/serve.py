"""Serve a repository through a real Triton server with the gateway in front of it, locally.

The Triton server that ships in ``nvidia-pytriton`` (python backend only) serves the
python-backend flavour of the repository on loopback; the gateway runs with
``--backend triton`` against it, on the same repository, so routing, budgets and metrics
are the gateway's and every graph run is Triton's. Ctrl-C (or SIGTERM) stops the gateway,
then Triton.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from builders.triton.flavour import write_python_flavour
from builders.triton.server import TritonServer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ports:
    """Where everything listens (Triton on 127.0.0.1 only)."""

    http: int = 8000
    grpc: int = 8001
    triton_http: int = 8010
    triton_grpc: int = 8011
    triton_metrics: int = 8012


def gateway_command(repository: Path, host: str, ports: Ports) -> list[str]:
    """The ``gateway serve`` command line in front of the local Triton."""
    return [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--repository",
        str(repository),
        "--host",
        host,
        "--http-port",
        str(ports.http),
        "--grpc-port",
        str(ports.grpc),
        "--backend",
        "triton",
        "--triton-url",
        f"127.0.0.1:{ports.triton_grpc}",
        "--triton-metrics-url",
        f"http://127.0.0.1:{ports.triton_metrics}/metrics",
    ]


def serve_triton(repository: Path, host: str = "127.0.0.1", ports: Ports = Ports()) -> int:
    """Start Triton on the python flavour of ``repository``, then the gateway; block.

    Returns:
        The gateway's exit status.

    Raises:
        FileNotFoundError: ``repository`` has no published ONNX variants.
    """
    with tempfile.TemporaryDirectory(prefix="triton-flavour-") as tmp:
        flavour = Path(tmp) / "repository"
        names = write_python_flavour(repository, flavour)
        if not names:
            raise FileNotFoundError(f"{repository} has no published ONNX variants to serve")
        server = TritonServer(
            flavour,
            explicit=True,
            http_port=ports.triton_http,
            grpc_port=ports.triton_grpc,
            metrics_port=ports.triton_metrics,
            log_path=Path(tmp) / "triton.log",
        )
        log.info("starting tritonserver on 127.0.0.1:%d (%d models)", ports.triton_grpc, len(names))
        server.start()
        log.info("tritonserver ready; the gateway starts on %s:%d/%d", host, ports.http, ports.grpc)
        gateway = subprocess.Popen(gateway_command(repository, host, ports))

        def forward(signum: int, frame: FrameType | None) -> None:
            gateway.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = gateway.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if gateway.poll() is None:
                gateway.terminate()
                gateway.wait(timeout=30)
            server.stop()
        if status != 0:
            log.error("gateway exited with %d; Triton's log ended:\n%s", status, server.log_tail())
        return status
