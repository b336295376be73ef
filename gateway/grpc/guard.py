"""The access check on every gRPC call, as a server interceptor (one call per RPC).

Which access each method needs is this table; the check itself is ``gateway.auth``'s, the
same one the HTTP transport calls. A refused call is answered before its request message is
even parsed.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from gateway.auth import Access, AccessPolicy
from gateway.errors import GatewayError

SERVICE = "/inference.GRPCInferenceService/"

METHOD_ACCESS: dict[str, Access] = {
    **{SERVICE + m: Access.HEALTH for m in ("ServerLive", "ServerReady", "ModelReady")},
    **{
        SERVICE + m: Access.INFERENCE
        for m in (
            "ServerMetadata",
            "ModelMetadata",
            "ModelConfig",
            "ModelStatistics",
            "ModelInfer",
            "ModelStreamInfer",
            "RepositoryIndex",
        )
    },
}
"""Access each method needs; every other method (model load/unload, shared memory, trace and
log settings) needs ``admin``."""


def method_access(method: str) -> Access:
    """The access a full gRPC method name needs (``admin`` for anything not listed)."""
    return METHOD_ACCESS.get(method, Access.ADMIN)


def _refusal(handler: grpc.RpcMethodHandler, exc: GatewayError) -> grpc.RpcMethodHandler:
    """A handler of the same kind that aborts with ``exc``'s status, the request unread."""

    async def abort(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(exc.grpc_code, exc.message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(abort)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(abort)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(abort)
    return grpc.unary_unary_rpc_method_handler(abort)


class AccessInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Runs :meth:`AccessPolicy.check` before every call that is not open."""

    def __init__(self, policy: AccessPolicy) -> None:
        """Guard calls with ``policy``."""
        self.policy = policy

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        """Continue with the call, or answer it with UNAUTHENTICATED / PERMISSION_DENIED."""
        handler = await continuation(handler_call_details)
        access = method_access(handler_call_details.method)
        if handler is None or self.policy.is_open(access):
            return handler
        headers = {
            key.lower(): value
            for key, value in (handler_call_details.invocation_metadata or ())
            if isinstance(value, str)
        }
        try:
            self.policy.check(headers, access)
        except GatewayError as exc:
            return _refusal(handler, exc)
        return handler
