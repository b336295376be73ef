"""A real gateway on 127.0.0.1, for tests that talk to it over the wire.

``launch_gateways()`` yields a function that starts gateways on any repository (both servers,
ports from binding port 0, a fresh metrics registry each) in background threads of the test
process and stops them all at the end. ``serve_process()`` runs ``gateway serve`` in a child
process instead, for tests whose client load must not share the gateway's interpreter (and
its GIL) or that measure the server alone; ``spawn_serve()`` starts one for tests that
signal it themselves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry

from gateway.config import GatewaySettings
from gateway.service import Gateway
from tests.support.wire import Samples, parse_samples

T = TypeVar("T")


class LoopbackEndpoints:
    """The URLs and ``/metrics`` of a gateway listening on 127.0.0.1 ports."""

    http_port: int
    grpc_port: int

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint, as tritonclient expects it."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def scrape(self) -> Samples:
        """Every sample on ``/metrics``, keyed by (name, labels)."""
        return parse_samples(httpx.get(f"http://{self.http_url}/metrics", timeout=30).text)


class GatewayThread(LoopbackEndpoints):
    """A real gateway serving from a background thread with its own event loop."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.gateway = Gateway(settings, registry=CollectorRegistry())
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="gateway", daemon=True)
        self._started = threading.Event()
        self._error: BaseException | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.gateway.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()

    def start(self) -> GatewayThread:
        self._thread.start()
        if not self._started.wait(120):
            raise TimeoutError("gateway did not start within 120 s")
        if self._error is not None:
            raise self._error
        return self

    def call(self, coro: Coroutine[Any, Any, T], timeout_s: float = 120) -> T:
        """Run a coroutine on the gateway's loop (e.g. a registry refresh) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        if self._error is None and self._thread.is_alive():
            self.call(self.gateway.stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(30)
        self.loop.close()

    @property  # type: ignore[override]
    def http_port(self) -> int:
        return self.gateway.http_port

    @property  # type: ignore[override]
    def grpc_port(self) -> int:
        return self.gateway.grpc_port


def gateway_settings(repository: Path, **overrides: Any) -> GatewaySettings:
    """Settings for a test gateway: loopback, free ports, no background reload."""
    values: dict[str, Any] = {
        "repository": repository,
        "host": "127.0.0.1",
        "http_port": 0,
        "grpc_port": 0,
        "reload_interval_s": 0,
        "log_level": "warning",
        "shutdown_grace_s": 2,
    }
    values.update(overrides)
    return GatewaySettings(**values)


@contextmanager
def launch_gateways() -> Iterator[Callable[..., GatewayThread]]:
    started: list[GatewayThread] = []

    def start(repository: Path, **overrides: Any) -> GatewayThread:
        gw = GatewayThread(gateway_settings(repository, **overrides)).start()
        started.append(gw)
        return gw

    try:
        yield start
    finally:
        for gw in reversed(started):
            gw.stop()


@dataclass
class GatewayProcess(LoopbackEndpoints):
    """``gateway serve`` in a child process, with its resources read from ``/proc``."""

    process: subprocess.Popen[str]
    http_port: int
    grpc_port: int

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))


def spawn_serve(
    repository: Path, env: Mapping[str, str], *args: str
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start ``gateway serve`` on free loopback ports; returns the process and its ready line.

    The environment is the test's without its ``GATEWAY_*`` settings, then ``env`` (no
    background reload, warnings only, unless ``env`` says otherwise); ``args`` are added to
    the command line. Its stderr is a pipe: read it with ``communicate()`` once it is told
    to stop.
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update({"GATEWAY_RELOAD_INTERVAL_S": "0", "GATEWAY_LOG_LEVEL": "warning", **env})
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(repository)]
    command += ["--http-port", "0", "--grpc-port", "0", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.kill()
        _, stderr = process.communicate(timeout=30)
        raise AssertionError(f"gateway exited before listening: {stderr[-4000:]}")
    return process, json.loads(line)


@contextmanager
def serve_process(repository: Path, env: Mapping[str, str]) -> Iterator[GatewayProcess]:
    """``gateway serve`` in a child process (:func:`spawn_serve`), stopped on leaving.

    On leaving, SIGTERM; the process must exit 0 without logging a traceback (an exception
    the error table does not know is logged with one).
    """
    process, ports = spawn_serve(repository, env)
    try:
        yield GatewayProcess(process, ports["http_port"], ports["grpc_port"])
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
        assert process.returncode == 0
        assert "Traceback" not in stderr, stderr[-4000:]
