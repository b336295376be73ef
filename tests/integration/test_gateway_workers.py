"""``gateway serve --workers 2``: two processes on one port pair, sharing their live load.

Connections are spread by the kernel, so each test opens many (each gRPC client on its own
connection) and checks what only a shared view can give, whichever worker a request hits.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.gateway import spawn_serve
from tests.support.wire import Samples, image_input, parse_samples

OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""Channel arguments that give a client a connection of its own (no shared subchannel)."""


class Workers:
    def __init__(self, repo: Path, **settings: object) -> None:
        env = {f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}
        self.proc, ports = spawn_serve(repo, env, "--workers", "2")
        self.grpc_url = f"127.0.0.1:{ports['grpc_port']}"
        self.http_url = f"127.0.0.1:{ports['http_port']}"

    def children(self) -> list[int]:
        """The worker processes (multiprocessing also starts a resource tracker)."""
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        pids = []
        for pid in text.split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:
                continue  # it just exited
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
        return sorted(pids)

    def client(self) -> grpcclient.InferenceServerClient:
        client = grpcclient.InferenceServerClient(self.grpc_url, channel_args=OWN_CONNECTION)
        assert client.is_server_live()  # connect now
        return client

    def scrape(self) -> Samples:
        return parse_samples(httpx.get(f"http://{self.http_url}/metrics", timeout=30).text)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


@pytest.fixture
def workers(repo: Path) -> Iterator[Workers]:
    started: list[Workers] = []

    def start(**settings: object) -> Workers:
        started.append(Workers(repo, **settings))
        return started[-1]

    yield start  # type: ignore[misc]
    for w in started:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(30)


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))


def _infer(client: grpcclient.InferenceServerClient, model: str) -> str:
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(image_input(0)[0][2])
    try:
        client.infer(model, [tensor])
        return "ok"
    except InferenceServerException as exc:
        return f"{exc.status()}: {exc.message()}"


def test_both_workers_serve_and_metrics_cover_the_whole_gateway(workers) -> None:
    gw = workers()
    pids = gw.children()
    assert len(pids) == 2
    before = {pid: _sockets(pid) for pid in pids}
    clients = [gw.client() for _ in range(16)]
    assert [_infer(c, "digits__fp32") for c in clients] == ["ok"] * 16
    # Each worker accepted some of the 16 connections (all on one: odds of 2 in 65536).
    assert all(_sockets(pid) > before[pid] for pid in pids)
    # Any worker's scrape counts every worker's requests.
    for _ in range(4):
        samples = gw.scrape()
        ok = _value(samples, "gateway_requests_total", model="digits", variant="fp32", code="OK")
        assert ok == 16
    for c in clients:
        c.close()
    assert gw.stop() == 0


def test_routing_in_one_worker_sees_requests_in_flight_in_the_other(workers) -> None:
    gw = workers(max_in_flight_per_variant=4)
    holders = [gw.client() for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(_infer, c, "slow__fp32") for c in holders]
        deadline = time.monotonic() + 30
        while _value(gw.scrape(), "gateway_in_flight", model="slow", variant="fp32") < 4:
            assert time.monotonic() < deadline, "four slow requests never in flight at once"
            time.sleep(0.01)
        # Six new connections, spread over both workers: each sees four in flight.
        probes = [_infer(gw.client(), "slow__fp32") for _ in range(6)]
        assert [f.result() for f in running] == ["ok"] * 4
    assert all("at its in-flight limit (4)" in p for p in probes), probes
    assert gw.stop() == 0


def test_sigterm_drains_every_worker(workers) -> None:
    gw = workers()
    clients = [gw.client() for _ in range(8)]
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda c=c: outcomes.append(_infer(c, "slow__fp32")))
        for c in clients
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while _value(gw.scrape(), "gateway_in_flight", model="slow", variant="fp32") < 4:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert gw.stop() == 0
    for t in threads:
        t.join(30)
    assert outcomes == ["ok"] * 8


def test_a_worker_that_dies_is_replaced(workers) -> None:
    gw = workers()
    first, second = gw.children()
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        pids = gw.children()
        if len(pids) == 2 and first not in pids:
            break
        assert time.monotonic() < deadline, f"no replacement for worker {first}: {pids}"
        time.sleep(0.1)
    assert second in pids
    # The replacement serves (some of the new connections land on it).
    assert [_infer(gw.client(), "digits") for _ in range(8)] == ["ok"] * 8
    assert gw.stop() == 0
