"""The fixture repository and one shared gateway on it, plus real clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.support.repo_fixture import build_repository
from tests.support.wire import PROTOCOLS, Wire

GATEWAY_SETTINGS = {
    # Routing follows the fixture's declared profiles and live in-flight counts only, so
    # decisions do not depend on how fast this machine happens to run the tiny graphs.
    "observed_weight": 0.0,
    # The declared profiles are not what the tiny graphs take, so a hard budget would drop
    # requests the declared times say cannot make it; the drop has its own test.
    "default_latency_budget_policy": "soft",
    "max_in_flight_per_variant": 4,
    "max_payload_bytes": 2 * 1024 * 1024,
    "task_threads": 2,
    "request_timeout_s": 30,
}


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repository(tmp_path_factory.mktemp("gateway"))


@pytest.fixture(scope="session")
def gw(repo: Path, session_gateway_factory: Callable[..., Any]) -> Any:
    return session_gateway_factory(repo, **GATEWAY_SETTINGS)


@pytest.fixture(scope="session")
def grpc_client(gw: Any) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http_client(gw: Any) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(gw.http_url, network_timeout=60)
    yield client
    client.close()


@pytest.fixture(params=PROTOCOLS)
def wire(
    request: pytest.FixtureRequest,
    grpc_client: grpcclient.InferenceServerClient,
    http_client: httpclient.InferenceServerClient,
) -> Wire:
    """The same calls over gRPC and over HTTP."""
    return Wire(request.param, grpc_client if request.param == "grpc" else http_client)
