"""Every Grafana dashboard query returns data from a real Prometheus scraping real servers.

Grafana is not run: each panel target's PromQL goes to Prometheus with the dashboard
variables as Grafana expands them when "All" families are selected. Uses the stack of
tests/support/monitoring.py (one Prometheus, gateway and Triton shared with
test_prometheus_rules.py).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("gateway.service", reason="the gateway package is not importable yet")

from tests.support.monitoring import MonitoredStack, finite, monitored_stack  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "helm" / "variant-gateway" / "files" / "grafana"
# Grafana's expansion with every family selected (the variables' allValue) and a rate
# window that spans several 1 s scrapes.
VARIABLES = {"model": ".*", "__rate_interval": "1m", "__interval": "15s", "__range": "1h"}


@pytest.fixture(scope="session")
def dashboard_stack(
    repo: Path, session_gateway_factory: Callable[..., Any]
) -> Iterator[MonitoredStack]:
    with monitored_stack(repo, session_gateway_factory) as shared:
        yield shared


def expand(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


def targets() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                out.append((f"{path.stem}/{panel['title']}/{target['refId']}", target))
    return out


def variables() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DASHBOARD_DIR.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                out.append((f"{path.stem}/{variable['name']}", variable))
    return out


@pytest.mark.parametrize(("where", "target"), targets(), ids=[w for w, _ in targets()])
def test_every_panel_query_returns_series(
    dashboard_stack: MonitoredStack, where: str, target: dict[str, Any]
) -> None:
    if "nv_inference" in target["expr"] or 'job="triton"' in target["expr"]:
        dashboard_stack.require_triton()
    expr = expand(target["expr"])
    result = dashboard_stack.wait_for(expr, lambda r: bool(finite(r)))
    assert finite(result), f"{where}: {expr} returned {result}"
    # Every label the legend names is on every series.
    legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
    for series in result:
        assert legend_labels <= set(series["metric"]), f"{where}: {series['metric']}"


@pytest.mark.parametrize(("where", "variable"), variables(), ids=[w for w, _ in variables()])
def test_every_variable_lists_values(
    dashboard_stack: MonitoredStack, where: str, variable: dict[str, Any]
) -> None:
    query = variable["query"]["query"]
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert match, f"{where}: unsupported variable query {query}"
    selector, label = match.groups()
    values = dashboard_stack.api(f"label/{label}/values", **{"match[]": selector})
    assert {"digits", "slow", "flaky"} <= set(values), f"{where}: {values}"
