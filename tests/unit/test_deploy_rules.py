"""Prometheus config and rules checked and unit-tested with the real promtool.

The rule files live in the chart (helm/variant-gateway/files/prometheus); deploy/prometheus
loads them through its ``rules`` link, and deploy/prometheus/tests holds the promtool unit
tests: every alert fires on a synthetic history and stays quiet on a healthy one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "helm" / "variant-gateway" / "files" / "prometheus"
RECORDING = RULES_DIR / "recording-rules.yml"
ALERTING = RULES_DIR / "alerting-rules.yml"
DEPLOY = ROOT / "deploy" / "prometheus"
TESTS_DIR = DEPLOY / "tests"
SEVERITIES = {"critical", "warning"}


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in load(path)["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in rules(ALERTING)]


def record_names() -> list[str]:
    return [rule["record"] for rule in rules(RECORDING)]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: run `make setup` (Debian package prometheus)")
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT, check=False
    )


def test_rule_files_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RECORDING), str(ALERTING))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(record_names())} rules found" in result.stdout
    assert f"SUCCESS: {len(alert_names())} rules found" in result.stdout


def test_compose_prometheus_config_passes_promtool_check() -> None:
    result = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 2 rule files found" in result.stdout


def test_rule_unit_tests_pass() -> None:
    tests = sorted(TESTS_DIR.glob("*.test.yml"))
    assert [t.name for t in tests] == ["alerting-rules.test.yml", "recording-rules.test.yml"]
    result = promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(tests)


def test_rule_unit_tests_load_the_deployed_rule_files() -> None:
    for test in TESTS_DIR.glob("*.test.yml"):
        for name in load(test)["rule_files"]:
            resolved = (test.parent / name).resolve()
            assert resolved in (RECORDING.resolve(), ALERTING.resolve()), name
            assert (DEPLOY / "rules" / Path(name).name).resolve() == resolved


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [
        case
        for test in load(TESTS_DIR / "alerting-rules.test.yml")["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in alert_names():
        own = [case for case in cases if case["alertname"] == alert]
        firing = [case for case in own if case["exp_alerts"]]
        quiet = [case for case in own if not case["exp_alerts"]]
        assert firing, f"no promtool case where {alert} fires"
        assert quiet, f"no promtool case where {alert} stays quiet"
        for case in firing:
            for expected in case["exp_alerts"]:
                assert expected["exp_labels"]["severity"] in SEVERITIES
                assert set(expected["exp_annotations"]) == {"summary", "description"}
    assert {case["alertname"] for case in cases} == set(alert_names())


def test_every_recording_rule_is_checked_by_value() -> None:
    exprs = [
        case["expr"]
        for test in load(TESTS_DIR / "recording-rules.test.yml")["tests"]
        for case in test.get("promql_expr_test", [])
    ]
    for record in record_names():
        assert any(re.search(rf"(?<![\w:]){re.escape(record)}(?![\w:])", e) for e in exprs), (
            f"no promtool case checks the value of {record}"
        )


def test_recording_rule_names_follow_the_naming_convention() -> None:
    names = record_names()
    assert len(names) == len(set(names))
    for name in names:
        level, metric, operations = name.split(":")
        assert level and metric and operations, name


def test_alerts_carry_severity_summary_and_description() -> None:
    for rule in rules(ALERTING):
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
    assert len(alert_names()) == len(set(alert_names()))
