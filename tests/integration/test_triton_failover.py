"""Triton servers that hang or die under load: failover within one deadline, and recovery.

Real ``tritonserver`` processes serve the python-backend flavour of the fixture's
``translation`` family (each request calls the graph once per output token, so a server can
fail in the middle of a request). Clients keep sending requests with a deadline while the
servers are stopped (SIGSTOP), killed (SIGKILL) and started again on the same ports. Every
request is accounted for: it succeeds, or fails with a clear status, within its deadline.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from builders.triton.server import TritonServer
from tests.support.triton import python_flavour, subset
from tests.support.wire import metric, objects

DEADLINE_S = 5.0
"""Each request's deadline (the client's gRPC deadline; the gateway's limit too)."""
MARGIN_S = 1.0
"""Slack for the client and a loaded machine beyond the deadline."""
TEXT = "the cat sat on the mat"


@dataclass
class Call:
    start_s: float
    end_s: float
    status: str
    """"OK" or the gRPC status name of a clean error."""


@dataclass
class Load:
    """Clients sending translation requests one after another until stopped."""

    url: str
    clients: int = 3
    calls: list[Call] = field(default_factory=list)
    started: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _loop(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                tensor = grpcclient.InferInput("text", [1], "BYTES")
                tensor.set_data_from_numpy(objects(TEXT.encode()))
                with self._lock:
                    self.started += 1
                start = time.monotonic()
                try:
                    result = client.infer("translation", [tensor], client_timeout=DEADLINE_S)
                    assert result.as_numpy("text")[0] == TEXT.encode()
                    status = "OK"
                except InferenceServerException as exc:
                    status = str(exc.status()).removeprefix("StatusCode.")
                with self._lock:
                    self.calls.append(Call(start, time.monotonic(), status))
                if status != "OK":
                    time.sleep(0.05)  # a failing client backs off a little, as real ones do
        finally:
            client.close()

    def start(self) -> Load:
        self._threads = [threading.Thread(target=self._loop) for _ in range(self.clients)]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(DEADLINE_S + 30)
        assert not any(t.is_alive() for t in self._threads), "a client hangs"

    def since(self, t: float) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.start_s >= t]

    def wait_for_ok(self, after: float, count: int, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while sum(c.status == "OK" for c in self.since(after)) < count:
            assert time.monotonic() < deadline, "requests did not succeed again"
            time.sleep(0.05)


def restart(server: TritonServer, factory: Callable[..., TritonServer]) -> TritonServer:
    """A fresh server on the same ports and repository."""
    return factory(
        server.repository,
        explicit=True,
        http_port=server.http_port,
        grpc_port=server.grpc_port,
        metrics_port=server.metrics_port,
    )


def wait_health(gateway: Any, url: str, healthy: bool, timeout_s: float = 60) -> float:
    """Seconds until the gateway reports server ``url`` healthy (or unhealthy)."""
    start = time.monotonic()
    while True:
        value = metric(gateway.scrape(), "gateway_triton_server_healthy", server=url)
        if value == (1.0 if healthy else 0.0):
            return time.monotonic() - start
        assert time.monotonic() - start < timeout_s, f"{url} never became healthy={healthy}"
        time.sleep(0.05)


def signal_group(server: TritonServer, sig: signal.Signals) -> None:
    """Signal the server and its python backend stubs (one process group)."""
    assert server.process is not None
    os.killpg(server.process.pid, sig)


def runs(gateway: Any, server: str, outcome: str = "ok") -> float:
    samples = gateway.scrape()
    return sum(
        metric(
            samples,
            "gateway_triton_runs_total",
            server=server,
            model="translation",
            variant=v,
            outcome=outcome,
        )
        for v in ("fp32", "int8")
    )


def assert_accounted(load: Load) -> None:
    """Every request ended, each within its deadline, as a success or a clean error."""
    assert load.started == len(load.calls) > 0
    slow = [
        round(c.end_s - c.start_s, 2)
        for c in load.calls
        if c.end_s - c.start_s > DEADLINE_S + MARGIN_S
    ]
    assert slow == []


@pytest.fixture
def flavour(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    models = subset(repo, tmp_path / "repo", ("translation",))
    return models, python_flavour(models, tmp_path / "flavour")


def gateway_on(
    gateway_factory: Callable[..., Any], models: Path, servers: list[TritonServer], **extra: Any
) -> Any:
    return gateway_factory(
        models,
        backend="triton",
        triton_urls=[s.grpc_url for s in servers],
        triton_metrics_urls=[f"http://127.0.0.1:{s.metrics_port}/metrics" for s in servers],
        triton_probe_interval_s=0.3,
        request_timeout_s=DEADLINE_S,
        shutdown_grace_s=1,
        **extra,
    )


def test_replicas_and_fallback_carry_every_request(
    flavour: tuple[Path, Path],
    triton_factory: Callable[..., TritonServer],
    gateway_factory: Callable[..., Any],
) -> None:
    models, repository = flavour
    a = triton_factory(repository, explicit=True)
    b = triton_factory(repository, explicit=True)
    gateway = gateway_on(gateway_factory, models, [a, b], triton_fallback_embedded=True)
    load = Load(gateway.grpc_url).start()
    try:
        load.wait_for_ok(0, 20)
        assert runs(gateway, a.grpc_url) > 0 and runs(gateway, b.grpc_url) > 0

        # A hangs: its calls are cancelled and moved to B once A misses two probes. Each
        # probe waits the 0.3 s interval, then at most 0.3 s for an answer, so A is out
        # after about 1.5 s at worst (1.2 s measured with both cores busy); the bound is
        # the requests' deadline.
        hang = time.monotonic()
        signal_group(a, signal.SIGSTOP)
        assert wait_health(gateway, a.grpc_url, healthy=False) < DEADLINE_S
        load.wait_for_ok(time.monotonic(), 10)
        hung_runs = runs(gateway, a.grpc_url)
        load.wait_for_ok(time.monotonic(), 10)
        assert runs(gateway, a.grpc_url) == hung_runs  # nothing goes to the hung server
        signal_group(a, signal.SIGCONT)
        wait_health(gateway, a.grpc_url, healthy=True)
        resumed = runs(gateway, a.grpc_url)
        load.wait_for_ok(time.monotonic(), 20)
        assert runs(gateway, a.grpc_url) > resumed  # back in use
        assert runs(gateway, a.grpc_url, "failover") >= 1
        assert all(c.status == "OK" for c in load.since(hang))

        # Both die: the embedded fallback serves, Triton is reported down.
        kill = time.monotonic()
        a.kill()
        b.kill()
        wait_health(gateway, a.grpc_url, healthy=False)
        wait_health(gateway, b.grpc_url, healthy=False)
        fallback = runs(gateway, "embedded")
        load.wait_for_ok(time.monotonic(), 10)
        assert runs(gateway, "embedded") >= fallback + 10
        assert (
            httpx.get(f"http://{gateway.http_url}/v2/health/ready", timeout=10).status_code == 200
        )

        # Both come back on the same ports: the gateway reloads them and uses them again.
        a, b = restart(a, triton_factory), restart(b, triton_factory)
        wait_health(gateway, a.grpc_url, healthy=True)
        wait_health(gateway, b.grpc_url, healthy=True)
        before = runs(gateway, a.grpc_url) + runs(gateway, b.grpc_url)
        fallback = runs(gateway, "embedded")
        load.wait_for_ok(time.monotonic(), 20)
        assert runs(gateway, a.grpc_url) + runs(gateway, b.grpc_url) >= before + 20
        assert runs(gateway, "embedded") <= fallback + 3 * load.clients
    finally:
        load.stop()
    assert_accounted(load)
    assert [c.status for c in load.since(kill) if c.status != "OK"] == []
    samples = gateway.scrape()
    recovered = metric(
        samples,
        "gateway_triton_loads_total",
        server=a.grpc_url,
        model="translation",
        variant="fp32",
        reason="recovery",
        outcome="ok",
    )
    assert recovered == 1


def test_without_a_fallback_requests_fail_cleanly_until_triton_returns(
    flavour: tuple[Path, Path],
    triton_factory: Callable[..., TritonServer],
    gateway_factory: Callable[..., Any],
) -> None:
    models, repository = flavour
    server = triton_factory(repository, explicit=True)
    gateway = gateway_on(gateway_factory, models, [server])
    ready_url = f"http://{gateway.http_url}/v2/health/ready"
    load = Load(gateway.grpc_url).start()
    try:
        load.wait_for_ok(0, 20)
        kill = time.monotonic()
        server.kill()
        wait_health(gateway, server.grpc_url, healthy=False)
        assert httpx.get(ready_url, timeout=10).status_code == 503
        time.sleep(1.0)
        down = load.since(time.monotonic() - 0.8)
        assert down and {c.status for c in down} == {"UNAVAILABLE"}
        # A clean error comes at once, not at the deadline.
        assert max(c.end_s - c.start_s for c in down) < 1.0

        server = restart(server, triton_factory)
        wait_health(gateway, server.grpc_url, healthy=True)
        assert httpx.get(ready_url, timeout=10).status_code == 200
        load.wait_for_ok(time.monotonic(), 20)
    finally:
        load.stop()
    assert_accounted(load)
    statuses = {c.status for c in load.since(kill)}
    assert statuses <= {"OK", "UNAVAILABLE"} and "OK" in statuses
