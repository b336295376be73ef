"""The Helm chart rendered and linted offline (helm-python-sdk), validated object by object.

Core objects are validated against the Kubernetes 1.33 OpenAPI schemas with
``kubernetes-validate --strict``; the prometheus-operator objects, which it has no schema
for, against the subset of their CRD schemas the chart uses, and their rules with promtool.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "variant-gateway"
KUBE_VERSION = "1.33.0"
RELEASE = "demo"
NAMESPACE = "serving"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "triton-off": {"triton": {"enabled": False}},
    "monitoring-off": {"monitoring": {"enabled": False}},
    "autoscaling-on": {"autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12}},
    "autoscaling-cpu-only": {
        "autoscaling": {"enabled": True, "customMetric": {"enabled": False}},
    },
    "many-replicas": {
        "gateway": {
            "replicaCount": 6,
            "podDisruptionBudget": {"minAvailable": "50%"},
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                }
            ],
        },
        "triton": {"replicaCount": 3, "gpus": 2},
    },
    "object-storage-cpu-triton": {
        "modelRepository": {
            "source": "objectStorage",
            "objectStorage": {
                "url": "s3://models/variant-gateway",
                "endpointUrl": "http://minio.storage:9000",
                "region": "eu-west-1",
                "credentialsSecret": "model-store",
            },
        },
        "triton": {"gpus": 0, "tolerations": [], "loadModels": ["digits__fp32", "digits__int8"]},
        "gateway": {"config": {"default_latency_budget_ms": 50, "max_payload_bytes": 134217728}},
    },
    "keys-and-mutual-tls": {
        "gateway": {
            "auth": {
                "enabled": True,
                "protectMetrics": True,
                "keys": [{"id": "ci", "sha256": "ab" * 32, "scopes": ["inference", "metrics"]}],
            },
            "tls": {"enabled": True, "secretName": "gateway-tls", "clientCA": {"enabled": True}},
            "tritonTLS": {"enabled": True, "mutual": True, "secretName": "gateway-to-triton"},
            "config": {"backend": "triton"},
        },
        "triton": {"tls": {"enabled": True, "secretName": "triton-tls", "mutual": True}},
        "monitoring": {
            "serviceMonitor": {
                "tlsConfig": {"ca": {"secret": {"name": "gateway-tls", "key": "ca.crt"}}},
                "authorization": {"secretName": "prometheus-key", "secretKey": "key"},
            }
        },
    },
    "existing-key-secret-and-tls": {
        "gateway": {
            "auth": {"enabled": True, "existingSecret": "gateway-keys"},
            "tls": {"enabled": True, "secretName": "gateway-tls"},
        },
    },
    "existing-claim-minimal": {
        "modelRepository": {"pvc": {"existingClaim": "shared-models"}},
        "gateway": {
            "serviceAccount": {"create": False},
            "podDisruptionBudget": {"enabled": False},
            "preStopSleepSeconds": 0,
        },
        "monitoring": {"dashboards": {"enabled": False}, "prometheusRule": {"enabled": False}},
    },
}

# The subset of the prometheus-operator CRD schemas (monitoring.coreos.com/v1) the chart
# uses; additionalProperties: false so a misspelt field fails as it would in the API server.
_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": _STR, "namespace": _STR, "labels": _LABELS, "annotations": _LABELS},
    "additionalProperties": False,
}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": _STR,
                "selector": {
                    "type": "object",
                    "properties": {"matchLabels": _LABELS},
                    "additionalProperties": False,
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": _STR}},
                    "additionalProperties": False,
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port"],
                        "additionalProperties": False,
                        "properties": {
                            "port": _STR,
                            "path": _STR,
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scheme": {"enum": ["http", "https"]},
                            "tlsConfig": {"type": "object"},
                            "authorization": {
                                "type": "object",
                                "required": ["credentials"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"const": "Bearer"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["name", "key"],
                                        "additionalProperties": False,
                                        "properties": {"name": _STR, "key": _STR},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
_RULE = {
    "type": "object",
    "required": ["expr"],
    "additionalProperties": False,
    "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
    "properties": {
        "record": _STR,
        "alert": _STR,
        "expr": _STR,
        "for": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
        "labels": _LABELS,
        "annotations": _LABELS,
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": _STR,
                            "interval": _STR,
                            "rules": {"type": "array", "minItems": 1, "items": _RULE},
                        },
                    },
                }
            },
        },
    },
}
CRD_SCHEMAS = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(
    chart: helm.Chart, values: dict[str, Any], release: str = RELEASE
) -> list[dict[str, Any]]:
    """Every object the chart renders for ``values``, in template order."""
    manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(manifests[path]) if doc)
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
    found = [
        o
        for o in by_kind(objects, kind)
        if o["metadata"]["labels"]["app.kubernetes.io/component"] == component
    ]
    assert len(found) == 1, f"expected one {kind} of {component}, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == name)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[name], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 1 is informational (the chart has no icon); warnings and errors fail.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_validates_strictly(chart: helm.Chart, name: str) -> None:
    objects = render(chart, VALUE_SETS[name])
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in CRD_SCHEMAS:
            jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
            continue
        try:
            kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid at {path}: {exc.message}")
        assert len(obj["metadata"]["name"]) <= 63, where
        assert obj["metadata"]["namespace"] == NAMESPACE, where


def kinds_of(objects: list[dict[str, Any]]) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for obj in objects:
        key = (obj["kind"], obj["metadata"]["labels"]["app.kubernetes.io/component"])
        counts[key] = counts.get(key, 0) + 1
    return counts


DEFAULT_OBJECTS = {
    ("ConfigMap", "gateway"): 1,
    ("Deployment", "gateway"): 1,
    ("Service", "gateway"): 1,
    ("ServiceAccount", "gateway"): 1,
    ("PodDisruptionBudget", "gateway"): 1,
    ("PersistentVolumeClaim", "models"): 1,
    ("Deployment", "triton"): 1,
    ("Service", "triton"): 1,
    ("ServiceMonitor", "gateway"): 1,
    ("ServiceMonitor", "triton"): 1,
    ("PrometheusRule", "monitoring"): 1,
    ("ConfigMap", "monitoring"): 2,
}


def test_each_part_is_behind_its_value(chart: helm.Chart) -> None:
    assert kinds_of(render(chart, {})) == DEFAULT_OBJECTS
    without_triton = kinds_of(render(chart, VALUE_SETS["triton-off"]))
    assert without_triton == {k: v for k, v in DEFAULT_OBJECTS.items() if k[1] != "triton"} | {
        ("ServiceMonitor", "gateway"): 1
    }
    without_monitoring = kinds_of(render(chart, VALUE_SETS["monitoring-off"]))
    assert without_monitoring == {
        k: v
        for k, v in DEFAULT_OBJECTS.items()
        if k[0] not in ("ServiceMonitor", "PrometheusRule") and k[1] != "monitoring"
    }
    autoscaled = kinds_of(render(chart, VALUE_SETS["autoscaling-on"]))
    assert autoscaled == DEFAULT_OBJECTS | {("HorizontalPodAutoscaler", "gateway"): 1}
    minimal = kinds_of(render(chart, VALUE_SETS["existing-claim-minimal"]))
    assert minimal == {
        ("ConfigMap", "gateway"): 1,
        ("Deployment", "gateway"): 1,
        ("Service", "gateway"): 1,
        ("Deployment", "triton"): 1,
        ("Service", "triton"): 1,
        ("ServiceMonitor", "gateway"): 1,
        ("ServiceMonitor", "triton"): 1,
    }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_services_select_their_pods_on_the_container_ports(chart: helm.Chart, name: str) -> None:
    objects = render(chart, VALUE_SETS[name])
    for service in by_kind(objects, "Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        deployment = one(objects, "Deployment", component)
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        ports = {p["name"]: p["containerPort"] for p in container(deployment, component)["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{component} has no port {port['targetPort']}"
            assert port["port"] == ports[port["targetPort"]]


def test_gateway_serves_on_the_settings_default_ports(chart: helm.Chart) -> None:
    gateway_config = pytest.importorskip("gateway.config", reason="gateway package not importable")
    fields = gateway_config.GatewaySettings.model_fields
    objects = render(chart, {})
    service = one(objects, "Service", "gateway")
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": fields["http_port"].default,
        "grpc": fields["grpc_port"].default,
    }
    gw = container(one(objects, "Deployment", "gateway"), "gateway")
    args = gw["args"]
    assert args[0] == "serve"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options == {
        "--repository": "/models",
        "--host": "0.0.0.0",
        "--http-port": str(fields["http_port"].default),
        "--grpc-port": str(fields["grpc_port"].default),
    }
    mounts = {m["name"]: m for m in gw["volumeMounts"]}
    assert mounts["models"]["mountPath"] == "/models"
    assert mounts["models"]["readOnly"] is True


def test_gateway_arguments_are_real_cli_options(
    chart: helm.Chart, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = pytest.importorskip("gateway.cli", reason="gateway package not importable")
    gw = container(one(render(chart, {}), "Deployment", "gateway"), "gateway")
    with pytest.raises(SystemExit) as exited:
        cli.main([gw["args"][0], "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for option in gw["args"][1::2]:
        assert option in help_text, f"gateway serve has no option {option}"


def test_probes_hit_the_kserve_health_endpoints(chart: helm.Chart) -> None:
    objects = render(chart, {})
    for component in ("gateway", "triton"):
        c = container(one(objects, "Deployment", component), component)
        port_names = {p["name"] for p in c["ports"]}
        assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
        assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
        assert c["startupProbe"]["httpGet"]["path"] in ("/v2/health/live", "/v2/health/ready")
        # Model load may take minutes: the startup probe allows far more than liveness.
        startup = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        liveness = c["livenessProbe"]["periodSeconds"] * c["livenessProbe"]["failureThreshold"]
        assert startup >= 120 > liveness
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert c[probe]["httpGet"]["port"] in port_names


def test_gateway_reads_its_settings_from_the_configmap(chart: helm.Chart) -> None:
    objects = render(chart, {})
    configmap = one(objects, "ConfigMap", "gateway")
    deployment = one(objects, "Deployment", "gateway")
    gw = container(deployment, "gateway")
    assert gw["envFrom"] == [{"configMapRef": {"name": configmap["metadata"]["name"]}}]
    assert configmap["data"] and all(k.startswith("GATEWAY_") for k in configmap["data"])
    # A settings change rolls the pods.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    changed = render(chart, {"gateway": {"config": {"max_in_flight": 512}}})
    changed_annotations = one(changed, "Deployment", "gateway")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["checksum/config"] != changed_annotations["checksum/config"]


def test_shutdown_fits_the_grace_period(chart: helm.Chart) -> None:
    values = chart.values["gateway"]
    deployment = one(render(chart, {}), "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    gw = container(deployment, "gateway")
    assert gw["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "5"]
    assert pod["terminationGracePeriodSeconds"] > (
        values["preStopSleepSeconds"] + values["config"]["shutdown_grace_s"]
    )
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        render(chart, {"gateway": {"terminationGracePeriodSeconds": 8}})


def test_replicas_autoscaling_and_disruption_budget(chart: helm.Chart) -> None:
    fixed = render(chart, VALUE_SETS["many-replicas"])
    assert one(fixed, "Deployment", "gateway")["spec"]["replicas"] == 6
    assert one(fixed, "PodDisruptionBudget", "gateway")["spec"] == {
        "selector": one(fixed, "Deployment", "gateway")["spec"]["selector"],
        "minAvailable": "50%",
    }
    spread = one(fixed, "Deployment", "gateway")["spec"]["template"]["spec"][
        "topologySpreadConstraints"
    ]
    assert spread[0]["labelSelector"] == one(fixed, "Deployment", "gateway")["spec"]["selector"]

    scaled = render(chart, VALUE_SETS["autoscaling-on"])
    deployment = one(scaled, "Deployment", "gateway")
    assert "replicas" not in deployment["spec"]
    hpa = one(scaled, "HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)
    metrics = {m["type"]: m for m in hpa["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "gateway_in_flight"
    assert metrics["Pods"]["pods"]["target"] == {"type": "AverageValue", "averageValue": "16"}

    cpu_only = one(
        render(chart, VALUE_SETS["autoscaling-cpu-only"]), "HorizontalPodAutoscaler", "gateway"
    )
    assert [m["type"] for m in cpu_only["spec"]["metrics"]] == ["Resource"]
    with pytest.raises(helm.HelmError, match="needs a metric"):
        render(
            chart,
            {
                "autoscaling": {
                    "enabled": True,
                    "customMetric": {"enabled": False},
                    "targetCPUUtilizationPercentage": None,
                }
            },
        )


def test_autoscaling_metric_is_a_gateway_gauge(chart: helm.Chart) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    gateway_metrics = pytest.importorskip(
        "gateway.metrics", reason="gateway package not importable"
    )
    registry = prometheus_client.CollectorRegistry()
    gateway_metrics.GatewayMetrics(registry)
    gauges = {family.name for family in registry.collect() if family.type == "gauge"}
    name = chart.values["autoscaling"]["customMetric"]["name"]
    assert name in gauges


def test_triton_runs_explicit_model_control_on_gpus(chart: helm.Chart) -> None:
    objects = render(chart, {})
    deployment = one(objects, "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    triton = container(deployment, "triton")
    assert triton["command"] == ["tritonserver"]
    args = triton["args"]
    assert "--model-repository=/models" in args
    assert "--model-control-mode=explicit" in args
    assert "--load-model=*" in args
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    assert "--allow-gpu-metrics=true" in args
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "shm", "mountPath": "/dev/shm"} in triton["volumeMounts"]

    many = container(
        one(render(chart, VALUE_SETS["many-replicas"]), "Deployment", "triton"), "triton"
    )
    assert many["resources"]["limits"]["nvidia.com/gpu"] == 2

    cpu = render(chart, VALUE_SETS["object-storage-cpu-triton"])
    cpu_triton = container(one(cpu, "Deployment", "triton"), "triton")
    assert "nvidia.com/gpu" not in cpu_triton["resources"].get("limits", {})
    assert "--allow-gpu-metrics=false" in cpu_triton["args"]
    loads = [a for a in cpu_triton["args"] if a.startswith("--load-model=")]
    assert loads == ["--load-model=digits__fp32", "--load-model=digits__int8"]
    assert "tolerations" not in one(cpu, "Deployment", "triton")["spec"]["template"]["spec"]


def test_model_repository_from_a_claim_or_object_storage(chart: helm.Chart) -> None:
    default = render(chart, {})
    claim = one(default, "PersistentVolumeClaim", "models")["metadata"]["name"]
    for component in ("gateway", "triton"):
        pod = one(default, "Deployment", component)["spec"]["template"]["spec"]
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert models["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
        assert "initContainers" not in pod

    existing = render(chart, VALUE_SETS["existing-claim-minimal"])
    assert by_kind(existing, "PersistentVolumeClaim") == []
    pod = one(existing, "Deployment", "gateway")["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["persistentVolumeClaim"]["claimName"] == "shared-models"

    remote = render(chart, VALUE_SETS["object-storage-cpu-triton"])
    assert by_kind(remote, "PersistentVolumeClaim") == []
    for component in ("gateway", "triton"):
        pod = one(remote, "Deployment", component)["spec"]["template"]["spec"]
        models = next(v for v in pod["volumes"] if v["name"] == "models")
        assert "emptyDir" in models
        (fetch,) = pod["initContainers"]
        assert fetch["args"][:2] == ["s3", "sync"]
        assert fetch["args"][-2:] == ["s3://models/variant-gateway", "/models"]
        assert "--endpoint-url" in fetch["args"]
        env = {e["name"]: e for e in fetch["env"]}
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "model-store"
        assert {"name": "models", "mountPath": "/models"} in fetch["volumeMounts"]
    with pytest.raises(helm.HelmError, match="objectStorage.url is required"):
        render(chart, {"modelRepository": {"source": "objectStorage"}})


def test_service_monitors_scrape_the_metrics_ports_as_the_rule_jobs(chart: helm.Chart) -> None:
    objects = render(chart, {})
    rules = (CHART / "files" / "prometheus" / "alerting-rules.yml").read_text(encoding="utf-8")
    jobs = set()
    for monitor in by_kind(objects, "ServiceMonitor"):
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        service = one(objects, "Service", component)
        assert monitor["spec"]["selector"]["matchLabels"].items() <= (
            service["metadata"]["labels"].items()
        )
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        # The job label comes from this Service label; the rules name the same jobs.
        job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
        assert f'job="{job}"' in rules
        jobs.add((job, endpoint["port"]))
    assert jobs == {("gateway", "http"), ("triton", "metrics")}


def test_monitoring_selector_labels_are_configurable(chart: helm.Chart) -> None:
    values = {
        "monitoring": {
            "serviceMonitor": {"labels": {"release": "prometheus"}},
            "prometheusRule": {"labels": {"release": "prometheus"}},
            "dashboards": {"namespace": "grafana", "annotations": {"grafana_folder": "Serving"}},
        }
    }
    objects = render(chart, values)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        for obj in by_kind(objects, kind):
            assert obj["metadata"]["labels"]["release"] == "prometheus"
    dashboards = [
        o for o in by_kind(objects, "ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]
    ]
    assert len(dashboards) == 2
    for dashboard in dashboards:
        assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert dashboard["metadata"]["namespace"] == "grafana"
        assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Serving"}


def rule_files() -> list[Path]:
    return sorted((CHART / "files" / "prometheus").glob("*.yml"))


def test_prometheus_rule_embeds_the_rule_files(chart: helm.Chart, tmp_path: Path) -> None:
    rule = one(render(chart, {}), "PrometheusRule", "monitoring")
    expected = [
        group
        for path in rule_files()
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
    ]
    assert len(rule_files()) == 2
    assert rule["spec"]["groups"] == expected
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run `make setup` (Debian package prometheus)")
    rendered = tmp_path / "rendered-rules.yml"
    rendered.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}), encoding="utf-8")
    result = subprocess.run(
        [promtool, "check", "rules", str(rendered)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_configmaps_embed_the_dashboard_files(chart: helm.Chart) -> None:
    dashboards = sorted((CHART / "files" / "grafana").glob("*.json"))
    assert [p.name for p in dashboards] == ["operations.json", "variant-tradeoffs.json"]
    embedded: dict[str, Any] = {}
    for configmap in by_kind(render(chart, {}), "ConfigMap"):
        if configmap["metadata"]["labels"].get("grafana_dashboard") == "1":
            ((name, text),) = configmap["data"].items()
            embedded[name] = json.loads(text)
    assert embedded == {p.name: json.loads(p.read_text(encoding="utf-8")) for p in dashboards}


def test_deploy_uses_the_same_rule_and_dashboard_files() -> None:
    pairs = {
        ROOT / "deploy" / "prometheus" / "rules": CHART / "files" / "prometheus",
        ROOT / "deploy" / "grafana" / "dashboards": CHART / "files" / "grafana",
    }
    for deploy_dir, chart_dir in pairs.items():
        deploy_files = {p.name: p.read_bytes() for p in deploy_dir.iterdir() if p.is_file()}
        chart_files = {p.name: p.read_bytes() for p in chart_dir.iterdir() if p.is_file()}
        assert deploy_files == chart_files, f"{deploy_dir} differs from {chart_dir}"
        assert deploy_files


def test_long_release_names_stay_within_limits(chart: helm.Chart) -> None:
    objects = render(chart, {}, release="a-very-long-release-name-for-the-variant-gateway-chart")
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 for n in names), names
    assert len(set(zip([o["kind"] for o in objects], names, strict=True))) == len(objects)


def test_notes_name_the_endpoints(chart: helm.Chart) -> None:
    notes = chart.render({}, name=RELEASE, namespace=NAMESPACE)[
        "variant-gateway/templates/NOTES.txt"
    ]
    assert f"{RELEASE}-variant-gateway.{NAMESPACE}.svc:8000" in notes
    assert f"{RELEASE}-variant-gateway.{NAMESPACE}.svc:8001" in notes
    assert "port-forward" in notes
    off = chart.render(VALUE_SETS["triton-off"], name=RELEASE, namespace=NAMESPACE)
    assert "Triton" not in off["variant-gateway/templates/NOTES.txt"]
