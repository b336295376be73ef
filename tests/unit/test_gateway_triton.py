"""The Triton backend's pure parts: error mapping, Triton's metrics, demand, settings."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from pydantic import ValidationError
from tritonclient.utils import InferenceServerException

from gateway.backends.base import Backend
from gateway.backends.embedded import EmbeddedBackend
from gateway.backends.triton import (
    ModelCounters,
    TritonBackend,
    TritonInternalError,
    parse_triton_metrics,
    queue_signal,
    to_gateway_error,
)
from gateway.cli import main
from gateway.config import GatewaySettings
from gateway.errors import (
    BackendTimeoutError,
    CapacityExhaustedError,
    InvalidRequestError,
    VariantUnavailableError,
)
from gateway.routing.placement import DecayingCounts, Resident, plan_placement

MB = 1 << 20
CHART = Path(__file__).resolve().parents[2] / "helm" / "variant-gateway"

# An excerpt of a real tritonserver 2.51 /metrics answer.
TRITON_METRICS = """\
# HELP nv_inference_request_success Number of successful inference requests, all batch sizes
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="digits__fp32",version="1"} 40
nv_inference_request_success{model="digits__int8",version="1"} 0
# HELP nv_inference_request_failure Number of failed inference requests, all batch sizes
# TYPE nv_inference_request_failure counter
nv_inference_request_failure{model="digits__fp32",reason="BACKEND",version="1"} 2
# HELP nv_inference_count Number of inferences performed (does not include cached requests)
# TYPE nv_inference_count counter
nv_inference_count{model="digits__fp32",version="1"} 55
# HELP nv_inference_exec_count Number of model executions performed
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="digits__fp32",version="1"} 20
# HELP nv_inference_queue_duration_us Cumulative inference queuing duration in microseconds
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="digits__fp32",version="1"} 200000
# HELP nv_inference_compute_infer_duration_us Cumulative compute inference duration
# TYPE nv_inference_compute_infer_duration_us counter
nv_inference_compute_infer_duration_us{model="digits__fp32",version="1"} 100000
# HELP nv_inference_pending_request_count Instantaneous number of pending requests
# TYPE nv_inference_pending_request_count gauge
nv_inference_pending_request_count{model="digits__fp32",version="1"} 3
# HELP nv_pinned_memory_pool_total_bytes Pinned memory pool total memory size, in bytes
# TYPE nv_pinned_memory_pool_total_bytes gauge
nv_pinned_memory_pool_total_bytes 268435456
"""


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("StatusCode.DEADLINE_EXCEEDED", BackendTimeoutError),
        ("StatusCode.RESOURCE_EXHAUSTED", CapacityExhaustedError),
        ("StatusCode.INVALID_ARGUMENT", InvalidRequestError),
        ("StatusCode.UNAVAILABLE", VariantUnavailableError),
        ("StatusCode.NOT_FOUND", VariantUnavailableError),
        ("StatusCode.UNIMPLEMENTED", VariantUnavailableError),
        ("StatusCode.INTERNAL", TritonInternalError),
        ("StatusCode.UNKNOWN", TritonInternalError),
        (None, TritonInternalError),
    ],
)
def test_errors_map_by_status_not_text(status: str | None, error: type[Exception]) -> None:
    # The text says "timeout" every time: only the status may decide.
    exc = InferenceServerException("request timeout, model not found", status=status)
    mapped = to_gateway_error(exc, "digits__fp32")
    assert type(mapped) is error
    assert "digits__fp32" in str(mapped)


def test_triton_metrics_are_read_per_model() -> None:
    counters = parse_triton_metrics(TRITON_METRICS)
    assert set(counters) == {"digits__fp32", "digits__int8"}
    assert counters["digits__fp32"] == ModelCounters(
        requests=40, queue_us=200_000, executions=20, compute_us=100_000, pending=3
    )
    assert counters["digits__int8"] == ModelCounters()


def test_queue_signal_is_the_difference_of_two_scrapes() -> None:
    before = ModelCounters(requests=40, queue_us=200_000, executions=20, compute_us=100_000)
    after = ModelCounters(
        requests=60, queue_us=400_000, executions=30, compute_us=150_000, pending=1
    )
    signal = queue_signal(before, after)
    assert signal.requests == 20
    assert signal.queue_s == pytest.approx(0.01)  # 200 ms of queueing over 20 requests
    assert signal.execution_s == pytest.approx(0.005)  # 50 ms over 10 executions
    # Waiting 10 ms behind 5 ms executions is two runs ahead (one instance), four with two.
    assert signal.runs_ahead(1) == 2 and signal.runs_ahead(2) == 4
    idle = queue_signal(after, after)
    assert (idle.requests, idle.queue_s, idle.runs_ahead(1)) == (0, 0.0, 1)  # pending only


def test_a_restarted_server_counts_from_zero() -> None:
    before = ModelCounters(requests=500, queue_us=9e6, executions=400, compute_us=8e6)
    after = ModelCounters(requests=4, queue_us=4000, executions=4, compute_us=4000)
    signal = queue_signal(before, after)
    assert signal.requests == 4 and signal.queue_s == pytest.approx(0.001)


def test_demand_decays_with_its_time_constant() -> None:
    demand = DecayingCounts(10.0)
    for t in range(5):
        demand.add("a", float(t))
    assert demand.value("a", 4.0) == pytest.approx(sum(math.exp(-k / 10) for k in range(5)))
    assert demand.value("a", 14.0) == pytest.approx(demand.value("a", 4.0) * math.exp(-1))
    assert demand.value("b", 4.0) == 0.0
    demand.forget("a")
    assert demand.value("a", 4.0) == 0.0


def test_busy_variants_drain_only_for_a_clearly_stronger_demand() -> None:
    busy = [Resident("a", 60 * MB, in_flight=3, demand=4.0, last_used_s=0.0)]
    assert plan_placement("b", 50 * MB, 7.0, busy, 100 * MB, drain_margin=2.0).load is None
    plan = plan_placement("b", 50 * MB, 9.0, busy, 100 * MB, drain_margin=2.0)
    assert plan.load == "b" and plan.evict == ("a",)
    # A request with nothing loaded to run on outweighs any demand; loading is never evicted.
    urgent = plan_placement("b", 50 * MB, math.inf, busy, 100 * MB, drain_margin=2.0)
    assert urgent.evict == ("a",) and "waiting request" in urgent.reason
    loading = [Resident("a", 60 * MB, 0, 0.0, 0.0, loading=True)]
    assert plan_placement("b", 50 * MB, math.inf, loading, 100 * MB, 2.0).load is None


def test_idle_variants_go_before_busy_ones() -> None:
    residents = [
        Resident("busy", 40 * MB, in_flight=1, demand=0.0, last_used_s=0.0),
        Resident("idle", 40 * MB, in_flight=0, demand=1.0, last_used_s=5.0),
    ]
    plan = plan_placement("new", 40 * MB, math.inf, residents, 100 * MB, drain_margin=2.0)
    assert plan.evict == ("idle",)


def test_both_backends_speak_one_protocol() -> None:
    backend = TritonBackend(["127.0.0.1:1"], gpu_memory_budget_bytes=64 * MB)
    assert isinstance(backend, Backend) and isinstance(EmbeddedBackend(), Backend)
    # Only the embedded backend computes in the caller's thread (so tasks may run inline).
    assert not backend.runs_in_caller and EmbeddedBackend().runs_in_caller
    with pytest.raises(ValueError, match="explicit model control"):
        TritonBackend(["127.0.0.1:1"], explicit_model_control=False, gpu_memory_budget_bytes=1)
    with pytest.raises(ValueError, match="one metrics URL per server"):
        TritonBackend(["a:1", "b:1"], metrics_urls=["http://a:2/metrics"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"backend": "triton"}, "at least one server in triton_urls"),
        (
            {"triton_urls": ["a:8001", "b:8001"], "triton_metrics_urls": ["http://a:8002"]},
            "one per server",
        ),
        (
            {"triton_explicit_model_control": False, "triton_gpu_memory_budget_mb": 100},
            "needs triton_explicit_model_control",
        ),
        ({"backend": "onnx"}, "embedded"),
        ({"triton_channels_per_server": 0}, "greater than or equal to 1"),
    ],
)
def test_invalid_triton_settings_say_why(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**values)


def test_triton_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKEND", "triton")
    monkeypatch.setenv("GATEWAY_TRITON_URLS", '["t0:8001", "t1:8001"]')
    monkeypatch.setenv("GATEWAY_TRITON_GPU_MEMORY_BUDGET_MB", "1.5")
    settings = GatewaySettings()
    assert settings.triton_urls == ("t0:8001", "t1:8001")
    assert settings.triton_gpu_memory_budget_bytes == int(1.5 * MB)


def configmap(values: dict[str, Any]) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="demo", namespace="serving")
    data: dict[str, str] = yaml.safe_load(
        rendered["variant-gateway/templates/gateway-configmap.yaml"]
    )["data"]
    return data


def test_the_chart_points_a_triton_gateway_at_its_triton_service(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = configmap({"gateway": {"config": {"backend": "triton"}}})
    assert env["GATEWAY_TRITON_URLS"] == '["demo-variant-gateway-triton:8001"]'
    assert (
        env["GATEWAY_TRITON_METRICS_URLS"] == '["http://demo-variant-gateway-triton:8002/metrics"]'
    )
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = GatewaySettings()
    assert settings.backend == "triton"
    assert settings.triton_urls == ("demo-variant-gateway-triton:8001",)
    # Explicit servers win; an embedded gateway is left alone.
    own = configmap({"gateway": {"config": {"backend": "triton", "triton_urls": ["t:9"]}}})
    assert own["GATEWAY_TRITON_URLS"] == '["t:9"]' and own["GATEWAY_TRITON_METRICS_URLS"] == "[]"
    assert configmap({})["GATEWAY_TRITON_URLS"] == "[]"


def test_the_chart_needs_servers_when_it_runs_no_triton() -> None:
    values = {"gateway": {"config": {"backend": "triton"}}, "triton": {"enabled": False}}
    with pytest.raises(Exception, match="triton_urls is required"):
        configmap(values)


def test_serve_refuses_a_triton_backend_without_servers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in [k for k in os.environ if k.startswith("GATEWAY_")]:
        monkeypatch.delenv(key)
    assert main(["serve", "--backend", "triton"]) == 2
    assert "triton_urls" in capsys.readouterr().err
