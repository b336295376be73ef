"""The chart's values and values.schema.json against the gateway's real settings."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "variant-gateway"
SCHEMA = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
# Set on the command line by the Deployment, not through the ConfigMap.
COMMAND_LINE_SETTINGS = {"repository", "host", "http_port", "grpc_port"}

gateway_config = pytest.importorskip("gateway.config", reason="gateway package not importable")
GatewaySettings = gateway_config.GatewaySettings


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every property schema below ``schema``, with its dotted path."""
    for name, sub in schema.get("properties", {}).items():
        where = f"{path}.{name}" if path else name
        yield where, sub
        yield from walk(sub, where)
        if isinstance(sub.get("items"), dict):
            yield from walk(sub["items"], f"{where}[]")


def test_schema_is_valid_and_describes_every_field() -> None:
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    fields = list(walk(SCHEMA))
    assert len(fields) > 100
    undescribed = [where for where, sub in fields if not sub.get("description", "").strip()]
    assert undescribed == []


def test_default_values_match_the_schema(chart: helm.Chart) -> None:
    jsonschema.validate(VALUES, SCHEMA)
    chart.validate_schema(VALUES)
    assert chart.schema == SCHEMA


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"replicas": 3}}, "replicas"),
        ({"gateway": {"config": {"max_inflight": 8}}}, "max_inflight"),
        ({"gateway": {"config": {"max_in_flight": 0}}}, "max_in_flight"),
        ({"gateway": {"config": {"log_level": "verbose"}}}, "log_level"),
        ({"gateway": {"ports": {"http": 70000}}}, "http"),
        ({"modelRepository": {"source": "nfs"}}, "source"),
        ({"modelRepository": {"objectStorage": {"url": "gs://bucket/models"}}}, "url"),
        ({"triton": {"modelControlMode": "sometimes"}}, "modelControlMode"),
        ({"triton": {"gpus": -1}}, "gpus"),
        ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "interval"),
    ],
)
def test_schema_rejects_mistakes(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=message):
        chart.validate_schema(values)


def test_config_schema_covers_exactly_the_gateway_settings() -> None:
    config = SCHEMA["properties"]["gateway"]["properties"]["config"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == set(GatewaySettings.model_fields) - COMMAND_LINE_SETTINGS


@pytest.mark.parametrize("name", sorted(set(GatewaySettings.model_fields) - COMMAND_LINE_SETTINGS))
def test_config_schema_has_the_settings_constraints(name: str) -> None:
    chart_field = dict(SCHEMA["properties"]["gateway"]["properties"]["config"]["properties"][name])
    assert f"GATEWAY_{name.upper()}" in chart_field.pop("description")
    settings_field = {
        k: v
        for k, v in GatewaySettings.model_json_schema()["properties"][name].items()
        if k not in ("title", "default", "format")
    }
    if "anyOf" not in settings_field:  # the chart also accepts null: "the gateway's default"
        settings_field = {"anyOf": [settings_field, {"type": "null"}]}
    assert chart_field == settings_field


def test_config_defaults_are_the_gateway_defaults() -> None:
    config = VALUES["gateway"]["config"]
    for name, value in config.items():
        default = GatewaySettings.model_fields[name].default
        if isinstance(default, tuple):
            default = list(default)
        assert value == default, f"gateway.config.{name}: chart {value!r}, gateway {default!r}"


def configmap_env(chart: helm.Chart, values: dict[str, Any]) -> dict[str, str]:
    manifests = chart.render(values, name="demo", namespace="serving")
    configmap = yaml.safe_load(manifests["variant-gateway/templates/gateway-configmap.yaml"])
    data: dict[str, str] = configmap["data"]
    return data


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "max_in_flight": 1024,
            "max_in_flight_per_variant": 128,
            "max_payload_bytes": 268435456,
            "default_latency_budget_ms": 75.5,
            "default_gpu_memory_budget_mb": 2048,
            "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
            "observed_weight": 0.25,
            "log_level": "debug",
        },
    ],
    ids=["defaults", "tuned"],
)
def test_configmap_builds_the_gateway_settings(
    chart: helm.Chart, monkeypatch: pytest.MonkeyPatch, config: dict[str, Any]
) -> None:
    env = configmap_env(chart, {"gateway": {"config": config}})
    merged = VALUES["gateway"]["config"] | config
    assert set(env) == {f"GATEWAY_{k.upper()}" for k, v in merged.items() if v is not None}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = GatewaySettings()
    for name, value in merged.items():
        actual = getattr(settings, name)
        expected = GatewaySettings.model_fields[name].default if value is None else value
        if isinstance(actual, tuple):
            actual = list(actual)
            expected = list(expected)
        assert actual == expected, name


def test_configmap_writes_large_whole_numbers_without_exponent(chart: helm.Chart) -> None:
    # Helm holds numbers as floats; "1e+12" would be rejected by an int setting.
    env = configmap_env(chart, {"gateway": {"config": {"max_payload_bytes": 10**12}}})
    assert env["GATEWAY_MAX_PAYLOAD_BYTES"] == "1000000000000"
