"""One monitored stack: a real Prometheus scraping a real gateway and Triton after real traffic.

Prometheus runs the compose configuration (deploy/prometheus/prometheus.yml) with a 1 s
scrape and evaluation interval, the targets pointed at the test servers, and the chart's
rule files. ``monitored_stack`` is shared by every module that asks for it (the rules and
the dashboards tests), so they use one Prometheus, one gateway and one Triton.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from builders.triton.server import TritonServer, free_port
from tests.support.triton import python_flavour, subset
from tests.support.wire import Wire, image_input

ROOT = Path(__file__).resolve().parents[2]
DEPLOY_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES_DIR = ROOT / "helm" / "variant-gateway" / "files" / "prometheus"
SCRAPE_INTERVAL = "1s"
WAIT_S = 60.0
TRITON_MODEL = "digits__fp32"
# Settings of the monitored gateway: one request per variant at a time, so three concurrent
# requests to the single-variant "slow" family shed two of them.
GATEWAY_SETTINGS: dict[str, Any] = {
    "observed_weight": 0.0,
    # As in tests/integration/conftest.py: the tiny graphs take far less than their declared
    # times, so a hard budget would drop requests a loaded machine starts a little late.
    "default_latency_budget_policy": "soft",
    "max_in_flight_per_variant": 1,
    "task_threads": 4,
    "request_timeout_s": 60,
    # flaky__fp16 fails each of its 4 pinned requests (INTERNAL, as the traffic expects)
    # and is quarantined at the last one, so the quarantine series move too.
    "quarantine_failures": 4,
    "quarantine_check_s": 1.0,
}

Series = list[dict[str, Any]]


def finite(series: Series) -> list[float]:
    return [v for s in series if math.isfinite(v := float(s["value"][1]))]


@dataclass
class MonitoredStack:
    """Prometheus on 127.0.0.1 scraping the gateway and, if it started, Triton."""

    prometheus_url: str
    gateway: Any
    triton_error: BaseException | None = None
    log_path: Path | None = None
    outcomes: list[dict[str, list[str]]] = field(default_factory=list)
    """What each phase of gateway traffic got back: "ok" or the gRPC status."""

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.prometheus_url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> Series:
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr} is not an instant vector"
        result: Series = data["result"]
        return result

    def wait_for(
        self, expr: str, done: Callable[[Series], bool], timeout_s: float = WAIT_S
    ) -> Series:
        """Poll ``expr`` until ``done(result)``; returns the last result either way."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = self.query(expr)
            if done(result) or time.monotonic() > deadline:
                return result
            time.sleep(0.5)

    def require_triton(self) -> None:
        if self.triton_error is not None:
            raise AssertionError(f"Triton did not start: {self.triton_error}")

    def log_tail(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-20:])


def prometheus_config(gateway_target: str, triton_target: str, out: Path) -> Path:
    """The compose configuration, with fast intervals and the test targets."""
    config = yaml.safe_load(DEPLOY_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(
        scrape_interval=SCRAPE_INTERVAL,
        scrape_timeout=SCRAPE_INTERVAL,
        evaluation_interval=SCRAPE_INTERVAL,
    )
    config["rule_files"] = [
        str((DEPLOY_CONFIG.parent / name).resolve()) for name in config["rule_files"]
    ]
    targets = {"gateway": gateway_target, "triton": triton_target}
    assert {job["job_name"] for job in config["scrape_configs"]} == set(targets)
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    path = out / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_prometheus(config: Path, workdir: Path) -> Iterator[tuple[str, Path]]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: run `make setup` (Debian package prometheus)")
    check = subprocess.run(
        [shutil.which("promtool") or "promtool", "check", "config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--web.listen-address=127.0.0.1:{port}",
                f"--storage.tsdb.path={workdir / 'data'}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"prometheus exited: {log_path.read_text(errors='replace')}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        break
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus not ready in 60 s")
            time.sleep(0.2)
        yield url, log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def running_triton(repo: Path, workdir: Path) -> Iterator[tuple[Any, BaseException | None]]:
    """Triton serving the python-backend flavour of the fixture's digits family."""
    digits = subset(repo, workdir / "digits-repository", ("digits",))
    flavour = python_flavour(digits, workdir / "triton-repository")
    server = TritonServer(flavour, explicit=True, load_models=(TRITON_MODEL,))
    try:
        server.start()
    except Exception as exc:  # reported by the tests that need Triton
        server.stop()
        yield None, exc
        return
    try:
        yield server, None
    finally:
        server.stop()


def triton_traffic(server: Any, requests: int) -> None:
    client = httpclient.InferenceServerClient(server.http_url)
    try:
        for _ in range(requests):
            tensor = httpclient.InferInput("images", [2, 1, 8, 8], "FP32")
            tensor.set_data_from_numpy(np.zeros((2, 1, 8, 8), dtype=np.float32))
            client.infer(TRITON_MODEL, [tensor])
    finally:
        client.close()


def _call(wire: Wire, model: str, **kwargs: Any) -> str:
    try:
        wire.infer(model, image_input(0), **kwargs)
    except InferenceServerException as exc:
        return str(exc.status())
    return "ok"


def gateway_traffic(gateway: Any) -> dict[str, list[str]]:
    """Requests covering every outcome the rules look at; returns outcomes by kind."""
    grpc_client = grpcclient.InferenceServerClient(gateway.grpc_url)
    http_client = httpclient.InferenceServerClient(gateway.http_url, network_timeout=120)
    grpc, http = Wire("grpc", grpc_client), Wire("http", http_client)
    outcomes: dict[str, list[str]] = {}
    try:
        for wire in (grpc, http):
            outcomes.setdefault("most-accurate", []).append(_call(wire, "digits"))
            # Excludes fp32 and fp16 by their declared p95s (24 and 12 ms) and picks int8.
            budget = {"latency_budget_ms": 10}
            outcomes.setdefault("latency-budget", []).append(
                _call(wire, "digits", parameters=budget)
            )
            memory = {"gpu_memory_budget_mb": 10}
            outcomes.setdefault("gpu-budget", []).append(_call(wire, "digits", parameters=memory))
            outcomes.setdefault("pinned", []).append(_call(wire, "digits__fp16"))
            outcomes.setdefault("internal", []).append(_call(wire, "flaky__fp16"))
            outcomes.setdefault("not-found", []).append(_call(wire, "no-such-model"))
        # "slow" claims 1 ms and takes far longer, and serves one request at a time: of
        # three concurrent requests with a budget one is admitted (and misses its budget),
        # the other two are shed.
        slow_budget = {"latency_budget_ms": 20}
        clients = [grpcclient.InferenceServerClient(gateway.grpc_url) for _ in range(3)]
        try:
            for c in clients:
                c.is_server_live()  # connect now, so the three requests go out together
            with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
                futures = [
                    pool.submit(_call, Wire("grpc", c), "slow", parameters=slow_budget)
                    for c in clients
                ]
                outcomes["slow"] = sorted(f.result(timeout=300) for f in futures)
        finally:
            for c in clients:
                c.close()
    finally:
        grpc_client.close()
        http_client.close()
    return outcomes


def _start(repo: Path, gateway_factory: Callable[..., Any]) -> Iterator[MonitoredStack]:
    with contextlib.ExitStack() as exits:
        workdir = Path(exits.enter_context(tempfile.TemporaryDirectory(prefix="monitoring-")))
        gateway = gateway_factory(repo, **GATEWAY_SETTINGS)
        triton, triton_error = exits.enter_context(running_triton(repo, workdir))
        triton_target = f"127.0.0.1:{triton.metrics_port if triton else free_port()}"
        config = prometheus_config(gateway.http_url, triton_target, workdir)
        url, log_path = exits.enter_context(running_prometheus(config, workdir))
        stack = MonitoredStack(url, gateway, triton_error, log_path)
        # Traffic in two phases with scrapes before, between and after, so every counter
        # is seen rising (a series born at its first request has no rate until it rises).
        targets = 2 if triton else 1
        stack.wait_for('up{job=~"gateway|triton"} == 1', lambda r: len(r) == targets)
        for _ in range(2):
            stack.outcomes.append(gateway_traffic(gateway))
            if triton:
                triton_traffic(triton, 3)
            time.sleep(2.5)
        yield stack


_shared: dict[str, Any] = {"users": 0, "stack": None, "generator": None}


@contextlib.contextmanager
def monitored_stack(repo: Path, gateway_factory: Callable[..., Any]) -> Iterator[MonitoredStack]:
    """One stack for every module that asks, stopped when the last one is done."""
    if _shared["users"] == 0:
        generator = _start(repo, gateway_factory)
        _shared["stack"] = next(generator)
        _shared["generator"] = generator
    _shared["users"] += 1
    try:
        yield _shared["stack"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            with contextlib.suppress(StopIteration):
                next(_shared["generator"])
            _shared["stack"] = _shared["generator"] = None
