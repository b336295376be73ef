"""The one error table and its two adapters' inputs."""

from __future__ import annotations

import grpc
import pytest

from gateway.errors import (
    ERROR_TABLE,
    INTERNAL_MESSAGE,
    BackendTimeoutError,
    BudgetUnsatisfiableError,
    CapacityExhaustedError,
    InvalidRequestError,
    LimitExceededError,
    ModelNotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    UnauthenticatedError,
    VariantUnavailableError,
    status_of,
)

ROWS = [
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND, 404),
    (InvalidRequestError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (LimitExceededError, grpc.StatusCode.INVALID_ARGUMENT, 400),
    (UnauthenticatedError, grpc.StatusCode.UNAUTHENTICATED, 401),
    (PermissionDeniedError, grpc.StatusCode.PERMISSION_DENIED, 403),
    (PayloadTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED, 413),
    (BudgetUnsatisfiableError, grpc.StatusCode.FAILED_PRECONDITION, 400),
    (CapacityExhaustedError, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (VariantUnavailableError, grpc.StatusCode.UNAVAILABLE, 503),
    (BackendTimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED, 504),
]


@pytest.mark.parametrize(("cls", "code", "status"), ROWS)
def test_each_row(cls, code, status):
    assert status_of(cls("what went wrong")) == (code, status, "what went wrong")
    assert cls("x").code_name == code.name


def test_table_lists_every_row():
    assert set(ERROR_TABLE) == {row[0] for row in ROWS}


def test_unknown_exceptions_are_internal_and_say_nothing():
    assert status_of(KeyError("secret detail")) == (grpc.StatusCode.INTERNAL, 500, INTERNAL_MESSAGE)


def test_a_401_asks_for_a_bearer_key():
    assert UnauthenticatedError("x").http_headers == {
        "www-authenticate": 'Bearer realm="variant-gateway"'
    }
    assert dict(InvalidRequestError("x").http_headers) == {}
