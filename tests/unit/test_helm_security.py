"""The chart's keys and TLS: Secrets mounted where the settings point, probes, scrapes, Triton."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

import helm_python as helm
import pytest
import yaml

from gateway.auth import KeyFile
from gateway.config import GatewaySettings
from tests.unit.test_helm_chart import CHART, by_kind, container, one, render

DIGEST = "ab" * 32
SECURE = {
    "gateway": {
        "auth": {
            "enabled": True,
            "protectMetrics": True,
            "keys": [
                {"id": "ci", "sha256": DIGEST, "scopes": ["inference"]},
                {"id": "prometheus", "sha256": "cd" * 32, "scopes": ["metrics"]},
            ],
        },
        "tls": {"enabled": True, "secretName": "gateway-tls"},
    },
    "monitoring": {
        "serviceMonitor": {
            "tlsConfig": {"ca": {"secret": {"name": "gateway-tls", "key": "ca.crt"}}},
            "authorization": {"secretName": "prometheus-key", "secretKey": "key"},
        }
    },
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def settings_of(objects: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> GatewaySettings:
    configmap = one(objects, "ConfigMap", "gateway")
    for key, value in configmap["data"].items():
        monkeypatch.setenv(key, value)
    return GatewaySettings()


def mounted_files(deployment: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """Every file the gateway container sees from a Secret: path -> (secret, key or None)."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    files: dict[str, tuple[str, str | None]] = {}
    for mount in container(deployment, "gateway")["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        assert "subPath" not in mount  # a subPath mount would never see a rotated Secret
        items = secret.get("items") or [{"key": None, "path": "*"}]
        for item in items:
            files[f"{mount['mountPath']}/{item['path']}"] = (secret["secretName"], item["key"])
    return files


def test_the_key_file_secret_holds_digests_and_is_where_the_setting_points(chart, monkeypatch):
    objects = render(chart, SECURE)
    secret = next(o for o in by_kind(objects, "Secret") if o["metadata"]["name"].endswith("-keys"))
    text = secret["stringData"]["keys.json"]
    keys = KeyFile.model_validate_json(text)
    assert [k.id for k in keys.keys] == ["ci", "prometheus"]
    settings = settings_of(objects, monkeypatch)
    files = mounted_files(one(objects, "Deployment", "gateway"))
    assert files[str(settings.auth_keys_file)] == (secret["metadata"]["name"], "keys.json")
    assert files[str(settings.tls_cert_file)] == ("gateway-tls", "tls.crt")
    assert files[str(settings.tls_key_file)] == ("gateway-tls", "tls.key")
    assert settings.auth_open_metrics is False and settings.auth_open_health is True
    assert settings.tls_client_ca_file is None


def test_an_existing_key_secret_is_mounted_and_none_is_written(chart, monkeypatch):
    values = {"gateway": {"auth": {"enabled": True, "existingSecret": "my-keys", "secretKey": "k"}}}
    objects = render(chart, values)
    assert by_kind(objects, "Secret") == []
    settings = settings_of(objects, monkeypatch)
    assert PurePosixPath(str(settings.auth_keys_file)).name == "k"
    assert mounted_files(one(objects, "Deployment", "gateway"))[str(settings.auth_keys_file)] == (
        "my-keys",
        "k",
    )


def test_rotating_keys_does_not_restart_pods(chart):
    rotated = merged(
        SECURE,
        {
            "gateway": {
                "auth": {"keys": [{"id": "new", "sha256": "ef" * 32, "scopes": ["inference"]}]}
            }
        },
    )
    before = one(render(chart, SECURE), "Deployment", "gateway")["spec"]["template"]
    after = one(render(chart, rotated), "Deployment", "gateway")["spec"]["template"]
    assert before == after  # the mounted Secret updates in place; the gateway re-reads it


@pytest.mark.parametrize(
    ("tls", "handler"),
    [
        ({}, {"httpGet": {"path": "/v2/health/ready", "port": "http"}}),
        (
            {"enabled": True, "secretName": "t"},
            {"httpGet": {"path": "/v2/health/ready", "port": "http", "scheme": "HTTPS"}},
        ),
        (
            {"enabled": True, "secretName": "t", "clientCA": {"enabled": True}},
            {"tcpSocket": {"port": "http"}},
        ),
    ],
    ids=["plain", "tls", "mutual-tls"],
)
def test_probes_follow_the_tls_mode(chart, tls, handler):
    gateway = container(
        one(render(chart, {"gateway": {"tls": tls}}), "Deployment", "gateway"), "gateway"
    )
    probe = {k: v for k, v in gateway["readinessProbe"].items() if k in ("httpGet", "tcpSocket")}
    assert probe == handler


def test_mutual_tls_mounts_the_client_ca(chart, monkeypatch):
    values = {
        "gateway": {
            "tls": {
                "enabled": True,
                "secretName": "gateway-tls",
                "clientCA": {"enabled": True, "secretName": "clients", "secretKey": "bundle.pem"},
            }
        }
    }
    objects = render(chart, values)
    settings = settings_of(objects, monkeypatch)
    files = mounted_files(one(objects, "Deployment", "gateway"))
    assert files[str(settings.tls_client_ca_file)] == ("clients", "bundle.pem")


def test_the_scrape_uses_https_and_a_bearer_key(chart):
    monitor = one(render(chart, SECURE), "ServiceMonitor", "gateway")
    endpoint = monitor["spec"]["endpoints"][0]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"] == {"ca": {"secret": {"name": "gateway-tls", "key": "ca.crt"}}}
    assert endpoint["authorization"] == {
        "type": "Bearer",
        "credentials": {"name": "prometheus-key", "key": "key"},
    }
    plain = one(render(chart, {}), "ServiceMonitor", "gateway")["spec"]["endpoints"][0]
    assert "scheme" not in plain and "authorization" not in plain


def test_triton_serves_grpc_over_tls_and_the_gateway_connects_with_it(chart, monkeypatch):
    values = {
        "gateway": {
            "config": {"backend": "triton"},
            "tritonTLS": {"enabled": True, "mutual": True, "secretName": "gw-client"},
        },
        "triton": {"tls": {"enabled": True, "secretName": "triton-tls", "mutual": True}},
    }
    objects = render(chart, values)
    triton = container(one(objects, "Deployment", "triton"), "triton")
    assert "--grpc-use-ssl=true" in triton["args"]
    assert "--grpc-use-ssl-mutual=true" in triton["args"]
    cert = next(a for a in triton["args"] if a.startswith("--grpc-server-cert="))
    mount = next(m for m in triton["volumeMounts"] if m["name"] == "triton-tls")
    assert cert.split("=", 1)[1].startswith(mount["mountPath"] + "/")
    settings = settings_of(objects, monkeypatch)
    assert settings.triton_tls is True
    files = mounted_files(one(objects, "Deployment", "gateway"))
    assert f"{PurePosixPath(str(settings.triton_tls_ca_file)).parent}/*" in files
    assert files[f"{PurePosixPath(str(settings.triton_tls_ca_file)).parent}/*"][0] == "gw-client"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"gateway": {"auth": {"enabled": True}}}, "needs gateway.auth.keys"),
        ({"gateway": {"tls": {"enabled": True}}}, "needs gateway.tls.secretName"),
        ({"gateway": {"tls": {"clientCA": {"enabled": True}}}}, "needs gateway.tls.enabled"),
        ({"gateway": {"tritonTLS": {"enabled": True}}}, "needs gateway.tritonTLS.secretName"),
        (
            {
                "gateway": {"config": {"backend": "triton"}},
                "triton": {"tls": {"enabled": True, "secretName": "t"}},
            },
            "needs gateway.tritonTLS.enabled",
        ),
    ],
    ids=["keys", "tls-secret", "ca-without-tls", "triton-secret", "triton-client"],
)
def test_values_that_cannot_work_fail_to_render(chart, values, message):
    with pytest.raises(helm.HelmError, match=message):
        render(chart, values)


def test_the_schema_refuses_a_key_where_its_digest_belongs(chart):
    plaintext = {"id": "ci", "sha256": "vg_" + "x" * 43, "scopes": ["inference"]}
    with pytest.raises(helm.HelmValuesError, match="sha256"):
        chart.validate_schema({"gateway": {"auth": {"keys": [plaintext]}}})
    with pytest.raises(helm.HelmValuesError, match="scopes"):
        chart.validate_schema(
            {"gateway": {"auth": {"keys": [{"id": "a", "sha256": DIGEST, "scopes": ["root"]}]}}}
        )


def test_defaults_change_nothing(chart):
    objects = render(chart, {})
    assert by_kind(objects, "Secret") == []
    env = one(objects, "ConfigMap", "gateway")["data"]
    assert not any(k in env for k in ("GATEWAY_AUTH_KEYS_FILE", "GATEWAY_TLS_CERT_FILE"))
    assert yaml.safe_dump(env)  # still a plain mapping of strings
