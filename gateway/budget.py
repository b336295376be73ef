"""Budgets and deadlines from request parameters, HTTP headers and gRPC metadata.

A budget may come as a request parameter (``latency_budget_ms``, ``gpu_memory_budget_mb``,
``min_accuracy``, ``latency_budget_policy``) or as a header / metadata entry
(``x-latency-budget-ms``, …). When both are given, the stricter one holds. Triton's
``timeout`` parameter (microseconds) is a deadline, like a gRPC deadline: always hard.

``latency_budget_policy`` says what a late answer is worth: ``hard`` (useless: work that can
no longer finish within the budget is dropped before it runs) or ``soft`` (still wanted: it
runs, late). A deadline is always hard; a soft budget shorter than the deadline stays soft
up to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.config import MIB
from gateway.errors import InvalidRequestError
from gateway.types import Budget, ParamValue

LATENCY = "latency_budget_ms"
GPU_MEMORY = "gpu_memory_budget_mb"
MIN_ACCURACY = "min_accuracy"
POLICY = "latency_budget_policy"
POLICIES = {"hard": True, "soft": False}
"""Values of ``latency_budget_policy`` and whether each makes the budget hard."""
TIMEOUT_US = "timeout"
"""Triton's request timeout parameter, in microseconds."""

HEADERS = {
    "x-latency-budget-ms": LATENCY,
    "x-gpu-memory-budget-mb": GPU_MEMORY,
    "x-min-accuracy": MIN_ACCURACY,
    "x-latency-budget-policy": POLICY,
}
"""Header (HTTP) / metadata (gRPC) names of the budget fields."""

RESERVED = frozenset(
    {
        LATENCY,
        GPU_MEMORY,
        MIN_ACCURACY,
        POLICY,
        TIMEOUT_US,
        "binary_data_output",
        "priority",
        "sequence_id",
        "sequence_start",
        "sequence_end",
        "headers",
    }
)
"""Parameters consumed by the gateway or the protocol, not passed on to the task."""


def _number(source: str, value: object) -> float:
    if isinstance(value, bool):
        raise InvalidRequestError(f"{source} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise InvalidRequestError(f"{source} must be a number, got {value!r}") from None
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequestError(f"{source} must be a finite number, got {value!r}")
    return float(value)


def _policy(source: str, value: object) -> Budget:
    text = value.strip().lower() if isinstance(value, str) else value
    if text not in POLICIES:
        raise InvalidRequestError(f"{source} must be 'hard' or 'soft', got {value!r}")
    return Budget(hard=POLICIES[str(text)])


def _one(source: str, field: str, value: object) -> Budget:
    if field == POLICY:
        return _policy(source, value)
    number = _number(source, value)
    if field == MIN_ACCURACY:
        if number < 0:
            raise InvalidRequestError(f"{source} must be >= 0, got {number:g}")
        return Budget(min_accuracy=number)
    if number <= 0:
        raise InvalidRequestError(f"{source} must be > 0, got {number:g}")
    if field == LATENCY:
        return Budget(latency_budget_s=number / 1000.0)
    return Budget(gpu_memory_budget_bytes=int(number * MIB))


def parse_budget(
    parameters: Mapping[str, ParamValue], headers: Mapping[str, str] | None = None
) -> Budget:
    """The budget a request states, from its parameters and headers.

    Args:
        parameters: Request parameters.
        headers: HTTP headers or gRPC metadata, with lower-case names.

    Returns:
        The stricter of the stated values per field; unset fields stay None.

    Raises:
        InvalidRequestError: A value is not a finite number in range.
    """
    budget = Budget()
    for field in (LATENCY, GPU_MEMORY, MIN_ACCURACY, POLICY):
        if field in parameters:
            budget = budget.tightened(_one(f"parameter '{field}'", field, parameters[field]))
    for header, field in HEADERS.items():
        if headers and header in headers:
            budget = budget.tightened(_one(f"header '{header}'", field, headers[header]))
    return budget


def parse_timeout_s(parameters: Mapping[str, ParamValue]) -> float | None:
    """The ``timeout`` parameter (microseconds) in seconds, or None.

    Raises:
        InvalidRequestError: Not a positive number.
    """
    if TIMEOUT_US not in parameters:
        return None
    value = _number(f"parameter '{TIMEOUT_US}'", parameters[TIMEOUT_US])
    if value <= 0:
        raise InvalidRequestError(f"parameter '{TIMEOUT_US}' must be > 0 microseconds")
    return value / 1e6


def with_deadline(budget: Budget, deadline_s: float | None) -> Budget:
    """``budget`` with a client deadline ``deadline_s`` seconds away as a limit too.

    The deadline is hard. If it binds (no latency budget, or one no shorter), the budget
    becomes it, hard; a shorter budget keeps its own policy, since a soft budget's late
    answer still helps until the deadline (which is enforced on its own).
    """
    if deadline_s is None:
        return budget
    limit = budget.latency_budget_s
    binds = limit is None or deadline_s <= limit
    return budget.tightened(Budget(latency_budget_s=deadline_s, hard=True if binds else None))


def task_parameters(parameters: Mapping[str, ParamValue]) -> dict[str, ParamValue]:
    """The parameters meant for the task (everything not reserved)."""
    return {k: v for k, v in parameters.items() if k not in RESERVED}
