"""Budgets from parameters, headers and deadlines."""

from __future__ import annotations

import math

import pytest

from gateway.budget import parse_budget, parse_timeout_s, task_parameters, with_deadline
from gateway.errors import InvalidRequestError
from gateway.types import Budget

MIB = 2**20


def test_parameters_and_headers():
    budget = parse_budget(
        {"latency_budget_ms": 50, "gpu_memory_budget_mb": "64"}, {"x-min-accuracy": "90.5"}
    )
    assert budget == Budget(0.05, 64 * MIB, 90.5)


def test_stricter_of_parameter_and_header_wins():
    budget = parse_budget(
        {"latency_budget_ms": 50.0, "min_accuracy": 80, "gpu_memory_budget_mb": 10},
        {"x-latency-budget-ms": "20", "x-min-accuracy": "85", "x-gpu-memory-budget-mb": "100"},
    )
    assert budget == Budget(0.02, 10 * MIB, 85.0)


@pytest.mark.parametrize(
    ("parameters", "headers", "message"),
    [
        ({"latency_budget_ms": -1}, {}, "must be > 0"),
        ({"latency_budget_ms": 0}, {}, "must be > 0"),
        ({"gpu_memory_budget_mb": "lots"}, {}, "must be a number"),
        ({"min_accuracy": True}, {}, "must be a number"),
        ({"min_accuracy": -1}, {}, "must be >= 0"),
        ({"latency_budget_ms": math.inf}, {}, "finite"),
        ({}, {"x-latency-budget-ms": "nan"}, "finite"),
    ],
)
def test_bad_values_name_the_field(parameters, headers, message):
    with pytest.raises(InvalidRequestError, match=message):
        parse_budget(parameters, headers)


def test_defaults_fill_only_unset_fields():
    stated = Budget(latency_budget_s=0.1)
    defaults = Budget(latency_budget_s=1.0, gpu_memory_budget_bytes=5, min_accuracy=50.0)
    assert stated.or_defaults(defaults) == Budget(0.1, 5, 50.0)


def test_timeout_is_microseconds():
    assert parse_timeout_s({"timeout": 250_000}) == 0.25
    assert parse_timeout_s({}) is None
    with pytest.raises(InvalidRequestError):
        parse_timeout_s({"timeout": 0})


def test_task_parameters_drop_reserved_ones():
    params = {"top_k": 3, "latency_budget_ms": 5, "timeout": 1, "binary_data_output": True}
    assert task_parameters(params) == {"top_k": 3}


def test_a_deadline_is_hard_and_a_shorter_soft_budget_stays_soft():
    soft = Budget(latency_budget_s=0.1, hard=False)
    # A 10 s deadline behind a 100 ms soft budget: late answers still help until then.
    assert with_deadline(soft, 10.0) == soft
    # A deadline that binds is the budget, and hard.
    assert with_deadline(soft, 0.05) == Budget(latency_budget_s=0.05, hard=True)
    assert with_deadline(Budget(), 0.05) == Budget(latency_budget_s=0.05, hard=True)
    hard = Budget(latency_budget_s=0.1, hard=True)
    assert with_deadline(hard, 10.0) == hard
    assert with_deadline(soft, None) == soft
