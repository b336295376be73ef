"""Gateway settings: environment, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import GatewaySettings


def test_defaults_are_loopback_and_unbounded_budgets(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("GATEWAY_"):
            monkeypatch.delenv(key)
    s = GatewaySettings()
    assert (s.host, s.http_port, s.grpc_port) == ("127.0.0.1", 8000, 8001)
    assert s.repository == Path("model_repo")
    assert s.default_latency_budget_s is None and s.default_gpu_memory_budget_bytes is None


def test_environment_with_prefix(monkeypatch):
    monkeypatch.setenv("GATEWAY_HTTP_PORT", "9100")
    monkeypatch.setenv("GATEWAY_DEFAULT_LATENCY_BUDGET_MS", "250")
    monkeypatch.setenv("GATEWAY_DEFAULT_GPU_MEMORY_BUDGET_MB", "1.5")
    monkeypatch.setenv(
        "GATEWAY_EXECUTION_PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]'
    )
    s = GatewaySettings()
    assert s.http_port == 9100
    assert s.default_latency_budget_s == 0.25
    assert s.default_gpu_memory_budget_bytes == int(1.5 * 2**20)
    assert s.execution_providers[0] == "CUDAExecutionProvider"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"http_port": 9000, "grpc_port": 9000}, "must differ"),
        ({"max_in_flight": 4, "max_in_flight_per_variant": 8}, "exceeds max_in_flight"),
        ({"http_port": 70000}, "less than or equal to 65535"),
        ({"default_latency_budget_ms": 0}, "greater than 0"),
        ({"observed_weight": 1.5}, "less than or equal to 1"),
        ({"execution_providers": []}, "at least one provider"),
        ({"max_payload_bytes": 10}, "greater than or equal to 1024"),
        ({"unknown_field": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_say_why(values, message):
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**values)


def test_port_zero_may_repeat():
    assert GatewaySettings(http_port=0, grpc_port=0).http_port == 0
