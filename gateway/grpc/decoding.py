"""Registers the servicer so that a request message that fails to parse is bad input.

grpcio answers a message its deserializer cannot parse with UNKNOWN and the exception's
class name, a server-error class for what is the client's mistake. Here each method's
deserializer hands such a message on as :class:`MalformedRequest`, and the method answers
INVALID_ARGUMENT saying which message did not parse, before the servicer sees it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from tritonclient.grpc import service_pb2_grpc

from gateway.watch import one_line

SERVICE = "inference.GRPCInferenceService"


@dataclass(frozen=True)
class MalformedRequest:
    """A request message that did not parse, and why."""

    reason: str


class _Capture:
    """Stands in for the server while the generated code hands over its method handlers."""

    handlers: Mapping[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the same handlers also arrive by name below."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers = handlers


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    def parse(raw: bytes) -> Any:
        if deserialize is None:
            return raw
        try:
            return deserialize(raw)
        except Exception as exc:  # DecodeError and kin: the client sent a broken message
            return MalformedRequest(one_line(exc, 200))

    return parse


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], request: MalformedRequest) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request message does not parse: {request.reason}"
    )


def _checked(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    parse = _tolerant(handler.request_deserializer)
    serialize = handler.response_serializer
    if handler.request_streaming and handler.response_streaming:
        behaviour = handler.stream_stream

        async def stream(requests: AsyncIterator[Any], context: Any) -> AsyncIterator[Any]:
            async def checked() -> AsyncIterator[Any]:
                async for request in requests:
                    if isinstance(request, MalformedRequest):
                        await _refuse(context, request)
                    yield request

            async for response in behaviour(checked(), context):
                yield response

        return grpc.stream_stream_rpc_method_handler(
            stream, request_deserializer=parse, response_serializer=serialize
        )
    if handler.request_streaming or handler.response_streaming:
        return handler  # the service has no such methods; left as generated
    unary = handler.unary_unary

    async def call(request: Any, context: Any) -> Any:
        if isinstance(request, MalformedRequest):
            await _refuse(context, request)
        return await unary(request, context)

    return grpc.unary_unary_rpc_method_handler(
        call, request_deserializer=parse, response_serializer=serialize
    )


def register_servicer(servicer: service_pb2_grpc.GRPCInferenceServiceServicer, server: Any) -> None:
    """Add ``servicer`` to ``server`` as the generated code does, parse failures answered."""
    capture = _Capture()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = {name: _checked(h) for name, h in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
