"""The access check on every HTTP request, as ASGI middleware (one call per request).

Which access each route needs is :func:`route_access`; the check itself is
``gateway.auth``'s, the same one the gRPC transport calls. A refused request is answered
before its body is read.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.auth import Access, AccessPolicy
from gateway.errors import GatewayError
from gateway.http.app import error_response

HEALTH_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def route_access(path: str) -> Access:
    """The access a request path needs.

    Health (``/v2/health/*`` and model readiness, as KServe groups them), ``/metrics``,
    admin (repository load / unload) and, for everything else, inference.
    """
    if path in HEALTH_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready")):
        return Access.HEALTH
    if path == "/metrics":
        return Access.METRICS
    if path.startswith("/v2/repository/models/") and path.endswith(("/load", "/unload")):
        return Access.ADMIN
    return Access.INFERENCE


class AccessGuard:
    """ASGI middleware running :meth:`AccessPolicy.check` before every request not open."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy) -> None:
        """Guard ``app`` with ``policy``."""
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, or answer 401 / 403 with the error table's JSON body."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        access = route_access(str(scope["path"]))
        if not self.policy.is_open(access):
            headers = {
                key.decode("latin-1").lower(): value.decode("latin-1")
                for key, value in scope["headers"]
            }
            try:
                self.policy.check(headers, access)
            except GatewayError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)
