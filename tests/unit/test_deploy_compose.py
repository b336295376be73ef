"""docker compose, the Dockerfiles and the Grafana/Prometheus wiring agree with the chart.

No Docker engine is needed: files are parsed, every path they reference must exist, and
ports, arguments, images and users must match the Helm chart's defaults.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = ROOT / "helm" / "variant-gateway"
COMPOSE = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


@pytest.fixture(scope="module")
def rendered() -> Iterator[dict[str, dict[str, Any]]]:
    """The pod specs of the chart's default Deployments, by component."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render({}, name="demo", namespace="serving")
    pods = {}
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc and doc["kind"] == "Deployment":
                component = doc["metadata"]["labels"]["app.kubernetes.io/component"]
                pods[component] = doc["spec"]["template"]["spec"]
    yield pods


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    assert not pending, f"{path} ends inside a continuation"
    out = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        out.append((instruction.upper(), rest.strip()))
    return out


def instruction(path: Path, name: str) -> list[str]:
    return [rest for inst, rest in dockerfile(path) if inst == name]


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def ports_of(service: dict[str, Any]) -> dict[int, int]:
    """Container port by host port."""
    mapping = {}
    for entry in service.get("ports", []):
        host, container = str(entry).split(":")
        mapping[int(host)] = int(container)
    return mapping


def bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Host path (resolved from deploy/) by container path, for bind mounts."""
    mounts = {}
    for entry in service.get("volumes", []):
        source, target, *_ = entry.split(":")
        if source.startswith((".", "/")):
            mounts[target] = (DEPLOY / source).resolve()
    return mounts


def test_compose_runs_gateway_triton_prometheus_and_grafana() -> None:
    assert set(SERVICES) == {"gateway", "triton", "prometheus", "grafana"}
    gpu = yaml.safe_load((DEPLOY / "docker-compose.gpu.yml").read_text(encoding="utf-8"))
    assert set(gpu["services"]) == {"triton"}
    devices = gpu["services"]["triton"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_every_bind_mount_and_build_file_exists() -> None:
    named = set(COMPOSE.get("volumes", {}))
    for name, service in SERVICES.items():
        for entry in service.get("volumes", []):
            source = entry.split(":")[0]
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in named, f"{name} uses undeclared volume {source}"
        for env_file in service.get("env_file", []):
            assert (DEPLOY / env_file).is_file(), env_file
        if "build" in service:
            context = (DEPLOY / service["build"]["context"]).resolve()
            assert context == ROOT
            assert (context / service["build"]["dockerfile"]).is_file()


def test_gateway_runs_as_in_the_chart(rendered: dict[str, dict[str, Any]]) -> None:
    chart_gateway = rendered["gateway"]["containers"][0]
    compose_gateway = SERVICES["gateway"]
    assert compose_gateway["command"] == chart_gateway["args"]
    container_ports = {p["containerPort"] for p in chart_gateway["ports"]}
    assert set(ports_of(compose_gateway).values()) == container_ports
    assert bind_mounts(compose_gateway)["/models"] == ROOT / "model_repo"

    gateway_docker = DEPLOY / "gateway" / "Dockerfile"
    (cmd,) = instruction(gateway_docker, "CMD")
    assert exec_form(cmd) == chart_gateway["args"]
    (expose,) = instruction(gateway_docker, "EXPOSE")
    assert {int(p) for p in expose.split()} == container_ports
    (user,) = instruction(gateway_docker, "USER")
    security = rendered["gateway"]["securityContext"]
    assert user == f"{security['runAsUser']}:{security['runAsGroup']}"


def test_gateway_image_runs_the_gateway_console_script_on_the_project_python() -> None:
    gateway_docker = DEPLOY / "gateway" / "Dockerfile"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (entrypoint,) = instruction(gateway_docker, "ENTRYPOINT")
    (script,) = exec_form(entrypoint)
    module, _, function = project["scripts"][script].partition(":")
    assert (ROOT / Path(*module.split("."))).with_suffix(".py").is_file()
    assert f"def {function}(" in (ROOT / Path(*module.split("."))).with_suffix(".py").read_text(
        encoding="utf-8"
    )
    args = instruction(gateway_docker, "ARG")
    version = next(a.split("=")[1] for a in args if a.startswith("PYTHON_VERSION="))
    assert f">={version}" in project["requires-python"]
    health = next(rest for inst, rest in dockerfile(gateway_docker) if inst == "HEALTHCHECK")
    assert "/v2/health/ready" in health


def test_gateway_image_copies_what_the_build_context_keeps() -> None:
    gateway_docker = DEPLOY / "gateway" / "Dockerfile"
    kept = {
        line[1:].rstrip("/")
        for line in (gateway_docker.parent / "Dockerfile.dockerignore")
        .read_text(encoding="utf-8")
        .splitlines()
        if line.startswith("!")
    }
    copied = set()
    for rest in instruction(gateway_docker, "COPY"):
        if rest.startswith("--from="):
            continue
        *sources, _target = rest.split()
        copied |= set(sources)
    assert copied == kept
    for source in copied:
        assert (ROOT / source).exists(), source


def test_triton_runs_as_in_the_chart(rendered: dict[str, dict[str, Any]]) -> None:
    chart_triton = rendered["triton"]["containers"][0]
    compose_triton = SERVICES["triton"]
    assert compose_triton["image"] == chart_triton["image"]
    command = compose_triton["command"]
    assert command[0] == chart_triton["command"][0] == "tritonserver"
    assert set(command[1:]) <= set(chart_triton["args"])
    flags = {a.split("=")[0] for a in command[1:]}
    assert {
        "--model-repository",
        "--model-control-mode",
        "--http-port",
        "--grpc-port",
        "--metrics-port",
    } <= flags
    container_ports = {p["containerPort"] for p in chart_triton["ports"]}
    assert set(ports_of(compose_triton).values()) == container_ports
    assert bind_mounts(compose_triton)["/models"] == ROOT / "model_repo"

    triton_docker = DEPLOY / "triton" / "Dockerfile"
    args = dict(a.split("=", 1) for a in instruction(triton_docker, "ARG"))
    (base,) = instruction(triton_docker, "FROM")
    base = base.replace("${TRITON_VERSION}", args["TRITON_VERSION"])
    assert base == chart_triton["image"]
    (expose,) = instruction(triton_docker, "EXPOSE")
    assert {int(p) for p in expose.split()} == container_ports
    (cmd,) = instruction(triton_docker, "CMD")
    assert exec_form(cmd) == command


def test_host_ports_do_not_collide() -> None:
    host_ports = [port for s in SERVICES.values() for port in ports_of(s)]
    assert len(host_ports) == len(set(host_ports))


def test_prometheus_scrapes_the_compose_services_and_loads_the_chart_rules() -> None:
    prometheus = SERVICES["prometheus"]
    mounts = bind_mounts(prometheus)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == DEPLOY / "prometheus" / "prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    targets = {
        job["job_name"]: (job["metrics_path"], job["static_configs"][0]["targets"])
        for job in config["scrape_configs"]
    }
    gateway_http = int(
        SERVICES["gateway"]["command"][SERVICES["gateway"]["command"].index("--http-port") + 1]
    )
    triton_metrics = next(
        int(a.split("=")[1])
        for a in SERVICES["triton"]["command"]
        if a.startswith("--metrics-port=")
    )
    assert targets == {
        "gateway": ("/metrics", [f"gateway:{gateway_http}"]),
        "triton": ("/metrics", [f"triton:{triton_metrics}"]),
    }
    rules_dir = mounts["/etc/prometheus/rules"]
    assert rules_dir == CHART / "files" / "prometheus"
    for rule_file in config["rule_files"]:
        assert rule_file.startswith("rules/")
        assert (rules_dir / rule_file.removeprefix("rules/")).is_file(), rule_file


def test_grafana_provisions_prometheus_and_the_chart_dashboards() -> None:
    grafana = SERVICES["grafana"]
    mounts = bind_mounts(grafana)
    provisioning = mounts["/etc/grafana/provisioning"]
    assert provisioning == DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    )["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", source["url"]).groups()  # type: ignore[union-attr]
    assert host == "prometheus" and int(port) in ports_of(SERVICES["prometheus"]).values()
    (provider,) = yaml.safe_load(
        (provisioning / "dashboards" / "variant-gateway.yml").read_text(encoding="utf-8")
    )["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert dashboards == CHART / "files" / "grafana"
    assert sorted(p.name for p in dashboards.glob("*.json")) == [
        "operations.json",
        "variant-tradeoffs.json",
    ]
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (dashboards / Path(home).relative_to(provider["options"]["path"])).is_file()


def test_compose_gateway_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    gateway_config = pytest.importorskip("gateway.config", reason="gateway package not importable")
    pairs = [
        line.split("=", 1)
        for line in (DEPLOY / "gateway.env").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    assert pairs
    for key, value in pairs:
        assert key.startswith("GATEWAY_"), key
        assert key.removeprefix("GATEWAY_").lower() in gateway_config.GatewaySettings.model_fields
        monkeypatch.setenv(key, value)
    settings = gateway_config.GatewaySettings()
    for key, value in pairs:
        assert str(getattr(settings, key.removeprefix("GATEWAY_").lower())) in (value, f"{value}.0")


def test_prometheus_adapter_serves_the_autoscaling_metric() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    metrics = pytest.importorskip("gateway.metrics", reason="gateway package not importable")
    registry = prometheus_client.CollectorRegistry()
    metrics.GatewayMetrics(registry)
    exported = {
        f.name + ("_total" if f.type == "counter" else "")
        for f in registry.collect()
        if f.type in ("counter", "gauge")
    }
    adapter = yaml.safe_load(
        (DEPLOY / "kubernetes" / "prometheus-adapter-values.yaml").read_text(encoding="utf-8")
    )
    served = {}
    for rule in adapter["rules"]["custom"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
        assert series in exported, series
        assert re.fullmatch(rule["name"]["matches"], series)
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        served[rule["name"]["as"]] = series
    chart_values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    assert chart_values["autoscaling"]["customMetric"]["name"] in served
