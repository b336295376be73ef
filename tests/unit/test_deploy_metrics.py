"""Rules and dashboards query only series that exist: the gateway's, Triton's, or recorded.

The gateway's series come from ``GatewayMetrics`` itself; Triton's are the standard
``nv_inference_*`` names (the Prometheus integration test checks a real Triton exports them).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

metrics_module = pytest.importorskip("gateway.metrics", reason="gateway package not importable")

ROOT = Path(__file__).resolve().parents[2]
FILES = ROOT / "helm" / "variant-gateway" / "files"
RULE_FILES = sorted((FILES / "prometheus").glob("*.yml"))
DASHBOARDS = sorted((FILES / "grafana").glob("*.json"))
TRITON_METRICS = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_queue_duration_us",
}
PROMETHEUS_METRICS = {"up"}
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}


def gateway_series() -> set[str]:
    """Every series name the gateway exports, from its metric families."""
    registry = CollectorRegistry()
    metrics_module.GatewayMetrics(registry)
    names = set()
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a PromQL subset: no string functions)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors
    text = re.sub(r"\boffset\s+-?\w+", " ", text)  # offset modifiers
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\$\{?\w+\}?", " ", text)  # Grafana variables
    text = re.sub(r"(?<![\w:])\d+(?:\.\d+)?(?:e[+-]?\d+)?", " ", text)  # numbers
    names = set()
    for match in re.finditer(r"[A-Za-z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group(0) in _KEYWORDS:
            continue  # a function or an operator
        names.add(match.group(0))
    return names


def rule_exprs() -> Iterator[tuple[str, str]]:
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            for rule in group["rules"]:
                yield rule.get("record") or rule["alert"], rule["expr"]


def recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    for path in DASHBOARDS:
        dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                yield f"{path.stem}: {panel['title']} {target['refId']}", target["expr"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]["query"]
                selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
                assert selector, f"{path.stem}: unsupported variable query {query}"
                yield f"{path.stem}: variable {variable['name']}", selector.group(1)


def known_series() -> set[str]:
    return gateway_series() | recorded() | TRITON_METRICS | PROMETHEUS_METRICS


def test_the_extractor_finds_metric_names() -> None:
    expr = (
        '(sum by (model) (rate(gateway_shed_total{code=~"A|B"}[5m])) or vector(0))'
        " / on (model) group_left sum(rate(nv_inference_count[$__rate_interval])) / 1e6"
        " > bool 0.5 unless up offset 5m"
    )
    assert metric_names(expr) == {"gateway_shed_total", "nv_inference_count", "up"}


def test_gateway_series_cover_counters_gauges_and_histograms() -> None:
    series = gateway_series()
    assert {"gateway_requests_total", "gateway_in_flight", "gateway_request_seconds_bucket"} <= (
        series
    )
    assert "gateway_requests" not in series


@pytest.mark.parametrize(("where", "expr"), list(rule_exprs()), ids=lambda v: str(v)[:60])
def test_rules_query_known_series(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where} selects no series"
    assert names <= known_series(), f"{where} queries unknown {names - known_series()}"


@pytest.mark.parametrize(("where", "expr"), list(dashboard_exprs()), ids=lambda v: str(v)[:60])
def test_dashboards_query_known_series(where: str, expr: str) -> None:
    names = metric_names(expr)
    assert names, f"{where} selects no series"
    assert names <= known_series(), f"{where} queries unknown {names - known_series()}"


def test_every_gateway_series_is_on_a_dashboard_or_in_a_rule() -> None:
    used: set[str] = set()
    for _, expr in [*rule_exprs(), *dashboard_exprs()]:
        used |= metric_names(expr)
    # Recording rules carry a series onto dashboards too.
    for name, expr in rule_exprs():
        if name in used:
            used |= metric_names(expr)
    families = {re.sub(r"_(bucket|count|sum)$", "", s) for s in gateway_series()}
    unused = {f for f in families if not any(u.startswith(f) for u in used)}
    assert unused == set()
