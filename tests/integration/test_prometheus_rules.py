"""A real Prometheus scraping a real gateway (and a real Triton) that served real requests.

Prometheus runs the compose configuration (deploy/prometheus/prometheus.yml) with a 1 s
scrape and evaluation interval, the targets pointed at the test servers, and the chart's
rule files. Every recording rule must then return data, the ratios must reflect the
traffic sent, and the alerts the traffic provokes must be pending or firing.

The stack (tests/support/monitoring.py) is shared with test_dashboards_queries.py, so both
modules use one Prometheus, one gateway and one Triton.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("gateway.service", reason="the gateway package is not importable yet")

from tests.support.monitoring import (  # noqa: E402
    RULES_DIR,
    TRITON_MODEL,
    WAIT_S,
    MonitoredStack,
    Series,
    finite,
    monitored_stack,
)


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
