"""A real gateway on 127.0.0.1 in a background thread, for tests that talk to it over the wire.

``launch_gateways()`` yields a function that starts gateways on any repository (both servers,
ports from binding port 0, a fresh metrics registry each) and stops them all at the end.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client import CollectorRegistry

from gateway.config import GatewaySettings
from gateway.service import Gateway
from tests.support.wire import Samples, parse_samples

T = TypeVar("T")


class GatewayThread:
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

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.gateway.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.gateway.grpc_port}"

    def scrape(self) -> Samples:
        """Every sample on ``/metrics``, keyed by (name, labels)."""
        return parse_samples(httpx.get(f"http://{self.http_url}/metrics", timeout=30).text)


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
