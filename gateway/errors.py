"""The gateway's one error table: each error carries its gRPC status and HTTP code.

Both transports read these attributes and nothing else, so the same failure answers the same
way on gRPC and HTTP. Any other exception is a bug: it goes out as INTERNAL / 500 with a
generic message, and its traceback is logged.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import grpc

INTERNAL_MESSAGE = "internal error; see the gateway log"
"""What a client is told about an unexpected exception (details stay in the log)."""


class GatewayError(Exception):
    """Base of every error a client may see; the subclass decides the status codes."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    http_headers: Mapping[str, str] = MappingProxyType({})
    """Extra HTTP response headers of this error (e.g. ``WWW-Authenticate`` on a 401)."""

    @property
    def message(self) -> str:
        """The text sent to the client."""
        return str(self.args[0]) if self.args else type(self).__name__

    @property
    def code_name(self) -> str:
        """The gRPC status name, e.g. ``"NOT_FOUND"``: the ``code`` label in metrics."""
        return str(self.grpc_code.name)


class ModelNotFoundError(GatewayError):
    """No family, variant or version of that name."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    http_status = 404


class InvalidRequestError(GatewayError):
    """The request is malformed: wrong dtype or shape, undecodable data, bad budget values."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400


class LimitExceededError(InvalidRequestError):
    """The request is over one of the configured limits; the message names the setting.

    The limits: items, text length, audio seconds, image pixels, JSON nesting depth, tensor
    elements (``gateway/limits.py``). It is bad input, so it answers like any other
    (INVALID_ARGUMENT / 400): the same request can never succeed, unlike a shed one.
    """


class UnauthenticatedError(GatewayError):
    """No credentials, or credentials the gateway does not know (a missing or wrong key)."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    http_headers: Mapping[str, str] = MappingProxyType(
        {"www-authenticate": 'Bearer realm="variant-gateway"'}
    )


class PermissionDeniedError(GatewayError):
    """A known key that lacks the scope the call needs (e.g. ``metrics`` for /metrics)."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403


class PayloadTooLargeError(GatewayError):
    """The request body exceeds ``max_payload_bytes``.

    gRPC itself answers an oversize message with RESOURCE_EXHAUSTED, so the gateway's own
    check uses the same status; HTTP has a precise code for it.
    """

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413


class BudgetUnsatisfiableError(GatewayError):
    """No variant can ever meet the request's budgets, whatever the load."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400


class CapacityExhaustedError(GatewayError):
    """A variant fits the budgets, but none can take the request now: shed, retry later."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429


class VariantUnavailableError(GatewayError):
    """The model exists but cannot be served: its graph failed to load or its manifest is bad."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class BackendTimeoutError(GatewayError):
    """The request's deadline passed before the backend answered."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504


ERROR_TABLE: tuple[type[GatewayError], ...] = (
    ModelNotFoundError,
    InvalidRequestError,
    LimitExceededError,
    UnauthenticatedError,
    PermissionDeniedError,
    PayloadTooLargeError,
    BudgetUnsatisfiableError,
    CapacityExhaustedError,
    VariantUnavailableError,
    BackendTimeoutError,
)
"""Every error class a client may see, besides INTERNAL."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, int, str]:
    """The gRPC status, HTTP code and client message for any exception.

    Gateway errors map through the table; anything else is INTERNAL / 500 with a generic
    message, so internals never leak to clients.
    """
    if isinstance(exc, GatewayError):
        return exc.grpc_code, exc.http_status, exc.message
    return grpc.StatusCode.INTERNAL, 500, INTERNAL_MESSAGE
