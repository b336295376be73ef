"""A real Prometheus scraping a real gateway (and a real Triton) that served real requests.

Prometheus runs the compose configuration (deploy/prometheus/prometheus.yml) with a 1 s
scrape and evaluation interval, the targets pointed at the test servers, and the chart's
rule files. Every recording rule must then return data, the ratios must reflect the
traffic sent, and the alerts the traffic provokes must be pending or firing.

``monitored_stack`` is shared with test_dashboards_queries.py, so both modules use one
Prometheus, one gateway and one Triton.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import math
import shutil
import socket
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
import yaml

pytest.importorskip("gateway.service", reason="the gateway package is not importable yet")

import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from wire import Wire, image_input  # noqa: E402

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
    "max_in_flight_per_variant": 1,
    "task_threads": 4,
    "request_timeout_s": 60,
    # flaky__fp16 fails each of its 4 pinned requests (INTERNAL, as the traffic expects)
    # and is quarantined at the last one, so the quarantine series move too.
    "quarantine_failures": 4,
    "quarantine_check_s": 1.0,
}

Series = list[dict[str, Any]]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


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
    from builders.triton.flavour import write_python_flavour
    from builders.triton.server import TritonServer

    subset = workdir / "digits-repository"
    subset.mkdir()
    (subset / "digits.manifest.json").symlink_to(repo / "digits.manifest.json")
    for variant_dir in repo.glob("digits__*"):
        (subset / variant_dir.name).symlink_to(variant_dir)
    flavour = workdir / "triton-repository"
    write_python_flavour(subset, flavour)
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
            budget = {"latency_budget_ms": 8}
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


@pytest.fixture(scope="session")
def stack(repo: Path, session_gateway_factory: Callable[..., Any]) -> Iterator[MonitoredStack]:
    with monitored_stack(repo, session_gateway_factory) as shared:
        yield shared


def recording_rules() -> list[str]:
    path = RULES_DIR / "recording-rules.yml"
    groups = yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    return [rule["record"] for group in groups for rule in group["rules"]]


@pytest.mark.parametrize("record", recording_rules())
def test_every_recording_rule_returns_data(stack: MonitoredStack, record: str) -> None:
    if ":nv_" in record:
        stack.require_triton()
    result = stack.wait_for(record, lambda r: bool(finite(r)))
    assert finite(result), f"{record} returned {result}\n{stack.log_tail()}"


def by_label(series: Series, label: str) -> dict[str, float]:
    return {s["metric"][label]: float(s["value"][1]) for s in series}


def test_the_traffic_had_every_outcome(stack: MonitoredStack) -> None:
    assert len(stack.outcomes) == 2
    for phase in stack.outcomes:
        for kind in ("most-accurate", "latency-budget", "gpu-budget", "pinned"):
            assert phase[kind] == ["ok", "ok"], kind
        assert phase["internal"] == ["StatusCode.INTERNAL", "500"]
        assert phase["not-found"] == ["StatusCode.NOT_FOUND", "404"]
        assert phase["slow"] == ["StatusCode.RESOURCE_EXHAUSTED"] * 2 + ["ok"]


def test_ratios_reflect_the_traffic(stack: MonitoredStack) -> None:
    def positive_for(model: str) -> Callable[[Series], bool]:
        return lambda r: by_label(r, "model").get(model, 0.0) > 0

    misses = stack.wait_for("model:gateway_budget_misses:ratio_rate5m", positive_for("slow"))
    assert 0 < by_label(misses, "model")["slow"] <= 1
    assert by_label(misses, "model")["digits"] == 0

    errors = stack.wait_for("model:gateway_errors:ratio_rate5m", positive_for("flaky"))
    assert by_label(errors, "model")["flaky"] == pytest.approx(1.0)
    assert by_label(errors, "model")["digits"] == 0

    shed = stack.wait_for("model:gateway_shed:ratio_rate5m", positive_for("slow"))
    assert 0 < by_label(shed, "model")["slow"] < 1
    assert by_label(shed, "model")["digits"] == 0
    (job_shed,) = stack.wait_for("job:gateway_shed:ratio_rate5m", lambda r: bool(finite(r)))
    assert job_shed["metric"]["job"] == "gateway"
    assert 0 < float(job_shed["value"][1]) < 1

    downgrades = stack.wait_for("model:gateway_downgrades:ratio_rate5m", positive_for("digits"))
    # Per wire and phase: most-accurate, latency-budget, gpu-memory-budget, pinned.
    assert by_label(downgrades, "model")["digits"] == pytest.approx(0.5)

    share = stack.wait_for(
        'model_variant:gateway_request_share:ratio_rate5m{model="digits"}',
        lambda r: len(finite(r)) == 4,
    )
    assert sum(finite(share)) == pytest.approx(1.0)
    assert set(by_label(share, "variant")) == {"fp32", "fp16", "int8", "pruned-50-int8"}


def test_traffic_provokes_the_expected_alerts(stack: MonitoredStack) -> None:
    wanted = {
        ("GatewayManifestInvalid", "firing"),
        ("GatewayVariantDown", "pending"),
        ("GatewayErrorRatioHigh", "pending"),
        ("GatewayBudgetMissesHigh", "pending"),
        ("GatewaySheddingSustained", "pending"),
    }
    deadline = time.monotonic() + WAIT_S
    while True:
        alerts = stack.api("alerts")["alerts"]
        states = {(a["labels"]["alertname"], a["state"]) for a in alerts}
        if wanted <= states or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert wanted <= states, states
    variant_down = {
        (a["labels"]["model"], a["labels"]["variant"])
        for a in alerts
        if a["labels"]["alertname"] == "GatewayVariantDown"
    }
    assert ("flaky", "int8") in variant_down
    errors = {
        a["labels"]["model"] for a in alerts if a["labels"]["alertname"] == "GatewayErrorRatioHigh"
    }
    assert errors == {"flaky"}
    assert not {name for name, _ in states} & {"GatewayDown", "TritonDown", "TritonErrorRatioHigh"}


def test_triton_exports_the_series_the_rules_use(stack: MonitoredStack) -> None:
    stack.require_triton()
    for name in (
        "nv_inference_request_success",
        "nv_inference_request_failure",
        "nv_inference_count",
        "nv_inference_queue_duration_us",
    ):
        result = stack.wait_for(f'{name}{{job="triton", model="{TRITON_MODEL}"}}', bool)
        assert result, name
    (success,) = stack.query(f'sum(nv_inference_request_success{{model="{TRITON_MODEL}"}})')
    assert float(success["value"][1]) >= 6
