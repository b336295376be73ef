"""Triton's errors, read by gRPC status code (never by message text), in the gateway's terms."""

from __future__ import annotations

from tritonclient.utils import InferenceServerException

from gateway.errors import (
    BackendTimeoutError,
    CapacityExhaustedError,
    InvalidRequestError,
    VariantUnavailableError,
)

SERVER_DOWN = frozenset({"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"})
"""Statuses meaning "this server cannot answer": mark it down, try another replica."""
NOT_LOADED = frozenset({"StatusCode.NOT_FOUND", "StatusCode.FAILED_PRECONDITION"})
"""Triton answers these for a model that is not (or no longer) loaded."""
_TIMEOUT = frozenset({"StatusCode.DEADLINE_EXCEEDED"})
_BUSY = frozenset({"StatusCode.RESOURCE_EXHAUSTED"})
_BAD_INPUT = frozenset({"StatusCode.INVALID_ARGUMENT", "StatusCode.OUT_OF_RANGE"})
_MISCONFIGURED = frozenset(
    {"StatusCode.UNIMPLEMENTED", "StatusCode.PERMISSION_DENIED", "StatusCode.UNAUTHENTICATED"}
)


class TritonInternalError(RuntimeError):
    """Triton failed a run for a reason of its own (INTERNAL, UNKNOWN, ...): a 500."""


class ServerDownError(Exception):
    """A call was cancelled because its server was marked unhealthy mid-call."""


def status_of(exc: InferenceServerException) -> str:
    """The exception's gRPC status name (``"StatusCode.UNAVAILABLE"``), or "" without one."""
    return str(exc.status() or "")


def describe(exc: InferenceServerException) -> str:
    """``"<status>: <message>"``, as logged and reported for a failed call."""
    return f"{exc.status()}: {exc.message()}"


def to_gateway_error(exc: InferenceServerException, model: str) -> Exception:
    """Map a Triton error to the gateway's table by its status code.

    Unavailable, not-loaded and misconfigured servers are ``VariantUnavailableError``;
    Triton's own failures (INTERNAL, UNKNOWN, no status) are :class:`TritonInternalError`,
    which clients see as INTERNAL like any failed graph run.
    """
    status = status_of(exc)
    text = f"Triton ({status.removeprefix('StatusCode.') or 'no status'}) for {model}: "
    text += str(exc.message())
    if status in _TIMEOUT:
        return BackendTimeoutError(text)
    if status in _BUSY:
        return CapacityExhaustedError(text)
    if status in _BAD_INPUT:
        return InvalidRequestError(text)
    if status in SERVER_DOWN | NOT_LOADED | _MISCONFIGURED:
        return VariantUnavailableError(text)
    return TritonInternalError(text)


def is_server_fault(exc: InferenceServerException) -> bool:
    """Whether a failed call says a live server is failing its runs (its breaker counts it).

    INTERNAL, UNKNOWN or refusing us; not a server that is down (the health probes take it
    out and back), a deadline, a full queue, bad input, or a model merely not loaded there.
    """
    return status_of(exc) not in SERVER_DOWN | _TIMEOUT | _BUSY | _BAD_INPUT | NOT_LOADED
