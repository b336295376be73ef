"""The Grafana dashboards are well-formed: layout, data source, variables, targets.

Whether each query returns data from a real gateway is the integration test
tests/integration/test_dashboards_queries.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "helm" / "variant-gateway" / "files" / "grafana"
DASHBOARDS = {
    p.stem: json.loads(p.read_text(encoding="utf-8")) for p in DASHBOARD_DIR.glob("*.json")
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__range"}
GRID_WIDTH = 24


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_both_dashboards_exist_with_distinct_uids() -> None:
    assert set(DASHBOARDS) == {"variant-tradeoffs", "operations"}
    uids = [d["uid"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids)
    for dashboard in DASHBOARDS.values():
        assert dashboard["title"].startswith("Variant gateway / ")
        assert "variant-gateway" in dashboard["tags"]
        assert len(dashboard["uid"]) <= 40  # Grafana's limit


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout_fits_the_grid_without_overlap(name: str) -> None:
    dashboard = DASHBOARDS[name]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    cells: dict[tuple[int, int], int] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_queries_the_selected_prometheus(name: str) -> None:
    dashboard = DASHBOARDS[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["description"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_queries_use_only_defined_variables(name: str) -> None:
    dashboard = DASHBOARDS[name]
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTINS
    for panel in panels(dashboard):
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?(\w+)\}?", target["expr"]))
            assert used <= defined, f"{panel['title']}: undefined {used - defined}"
    model = next(v for v in dashboard["templating"]["list"] if v["name"] == "model")
    assert model["includeAll"] and model["allValue"] == ".*"


def test_the_variant_table_names_every_query_column() -> None:
    table = next(p for p in panels(DASHBOARDS["variant-tradeoffs"]) if p["type"] == "table")
    targets = table["targets"]
    assert all(t["instant"] and t["format"] == "table" for t in targets)
    organize = next(t for t in table["transformations"] if t["id"] == "organize")
    renamed = organize["options"]["renameByName"]
    assert {f"Value #{t['refId']}" for t in targets} <= set(renamed)
    units = {o["matcher"]["options"] for o in table["fieldConfig"]["overrides"]}
    assert {renamed[f"Value #{t['refId']}"] for t in targets} == units


def test_the_tradeoff_dashboard_shows_size_latency_quality_share_budget_and_shedding() -> None:
    exprs = " ".join(
        t["expr"] for p in panels(DASHBOARDS["variant-tradeoffs"]) for t in p["targets"]
    )
    for series in (
        "gateway_variant_size_bytes",
        "gateway_variant_quality",
        "gateway_variant_profiled_p95_seconds",
        "model_variant:gateway_request_seconds:p95_5m",
        "model_variant:gateway_request_share:ratio_rate5m",
        "model:gateway_budget_misses:ratio_rate5m",
        "gateway_shed_total",
        "gateway_in_flight",
    ):
        assert series in exprs, series


def test_the_operations_dashboard_shows_traffic_errors_latency_saturation_and_triton() -> None:
    exprs = " ".join(t["expr"] for p in panels(DASHBOARDS["operations"]) for t in p["targets"])
    for series in (
        "gateway_requests_total",
        "model:gateway_errors:ratio_rate5m",
        "gateway_request_seconds_bucket",
        "gateway_in_flight",
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
        "gateway_variant_ready",
    ):
        assert series in exprs, series
