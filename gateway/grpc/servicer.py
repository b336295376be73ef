"""``GRPCInferenceService`` over the data plane: convert, call, convert back.

Every RPC goes through one error path: a ``GatewayError`` aborts with its status from the
error table; anything else is logged and aborts INTERNAL with a generic message.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from gateway.dataplane import DataPlane
from gateway.errors import GatewayError, status_of
from gateway.grpc import convert

log = logging.getLogger(__name__)

T = TypeVar("T")


def call_headers(context: grpc.aio.ServicerContext[Any, Any]) -> dict[str, str]:
    """Text metadata of a call, names lower-cased (binary ``-bin`` entries skipped)."""
    return {
        key.lower(): value
        for key, value in (context.invocation_metadata() or ())
        if isinstance(value, str)
    }


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: Exception) -> NoReturn:
    code, _, message = status_of(exc)
    if not isinstance(exc, GatewayError):
        log.error("unexpected error in a gRPC call", exc_info=exc)
    await context.abort(code, message)
    raise AssertionError("context.abort returned")  # abort always raises


async def _guarded(
    context: grpc.aio.ServicerContext[Any, Any], call: Callable[[], Awaitable[T]]
) -> T:
    try:
        return await call()
    except Exception as exc:  # translated by the error table, unknown ones to INTERNAL
        await _abort(context, exc)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """KServe v2 gRPC service backed by a :class:`DataPlane`."""

    def __init__(self, dataplane: DataPlane) -> None:
        """Serve ``dataplane``."""
        self.dataplane = dataplane

    async def ServerLive(  # noqa: N802 - names fixed by the proto
        self, request: service_pb2.ServerLiveRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ServerLiveResponse:
        """Always live while the process serves."""
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(  # noqa: N802
        self, request: service_pb2.ServerReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ServerReadyResponse:
        """Ready once the repository is loaded and some family can serve."""
        return service_pb2.ServerReadyResponse(ready=self.dataplane.is_ready())

    async def ServerMetadata(  # noqa: N802
        self,
        request: service_pb2.ServerMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ServerMetadataResponse:
        """Server name, version and the protocol extensions it supports."""
        info = self.dataplane.info
        return service_pb2.ServerMetadataResponse(
            name=info.name, version=info.version, extensions=list(info.extensions)
        )

    async def ModelReady(  # noqa: N802
        self, request: service_pb2.ModelReadyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ModelReadyResponse:
        """Whether a family or variant can serve now; NOT_FOUND for unknown names."""

        async def call() -> service_pb2.ModelReadyResponse:
            ready = self.dataplane.model_ready(request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=ready)

        return await _guarded(context, call)

    async def ModelMetadata(  # noqa: N802
        self,
        request: service_pb2.ModelMetadataRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ModelMetadataResponse:
        """Task-level inputs and outputs of a family or variant."""

        async def call() -> service_pb2.ModelMetadataResponse:
            metadata = self.dataplane.model_metadata(request.name, request.version)
            return convert.metadata_response(metadata)

        return await _guarded(context, call)

    async def ModelConfig(  # noqa: N802
        self, request: service_pb2.ModelConfigRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ModelConfigResponse:
        """Task-level model configuration of a family or variant."""

        async def call() -> service_pb2.ModelConfigResponse:
            metadata = self.dataplane.model_metadata(request.name, request.version)
            config: model_config_pb2.ModelConfig = convert.model_config(metadata)
            return service_pb2.ModelConfigResponse(config=config)

        return await _guarded(context, call)

    async def RepositoryModelLoad(  # noqa: N802
        self,
        request: service_pb2.RepositoryModelLoadRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.RepositoryModelLoadResponse:
        """Read a family's manifest again now, serving it again if it was unloaded."""

        async def call() -> service_pb2.RepositoryModelLoadResponse:
            await self.dataplane.load_model(request.model_name)
            return service_pb2.RepositoryModelLoadResponse()

        return await _guarded(context, call)

    async def RepositoryModelUnload(  # noqa: N802
        self,
        request: service_pb2.RepositoryModelUnloadRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.RepositoryModelUnloadResponse:
        """Stop serving a family until it is loaded again."""

        async def call() -> service_pb2.RepositoryModelUnloadResponse:
            await self.dataplane.unload_model(request.model_name)
            return service_pb2.RepositoryModelUnloadResponse()

        return await _guarded(context, call)

    async def RepositoryIndex(  # noqa: N802
        self,
        request: service_pb2.RepositoryIndexRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.RepositoryIndexResponse:
        """Every family and variant with its state."""
        return convert.index_response(self.dataplane.repository_index(request.ready))

    async def _infer(
        self,
        request: service_pb2.ModelInferRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> service_pb2.ModelInferResponse:
        infer_request = convert.infer_request(
            request, call_headers(context), context.time_remaining(), self.dataplane.limits
        )
        response = await self.dataplane.infer(infer_request)
        return convert.infer_response(response)

    async def ModelInfer(  # noqa: N802
        self, request: service_pb2.ModelInferRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> service_pb2.ModelInferResponse:
        """Route and run one request; the chosen variant also goes out as trailing metadata.

        Trailing, not initial: it travels with the status, while initial metadata sent on
        its own is one more operation (and wake-up) per call.
        """
        try:  # the one error path, inline: this is the hot call
            message = await self._infer(request, context)
        except Exception as exc:  # translated by the error table, unknown ones to INTERNAL
            await _abort(context, exc)
        params = message.parameters
        context.set_trailing_metadata(
            (
                ("x-request-id", message.id),
                ("x-variant", params["variant"].string_param),
                ("x-selection-reason", params["selection_reason"].string_param),
            )
        )
        return message

    async def ModelStreamInfer(  # noqa: N802
        self,
        request_iterator: AsyncIterator[service_pb2.ModelInferRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Serve a stream of requests in order; a failed one answers with ``error_message``."""
        async for request in request_iterator:
            try:
                message = await self._infer(request, context)
            except Exception as exc:  # reported in-stream, as Triton does
                code, _, text = status_of(exc)
                if not isinstance(exc, GatewayError):
                    log.error("unexpected error in a streamed request", exc_info=exc)
                yield service_pb2.ModelStreamInferResponse(error_message=f"{code.name}: {text}")
                continue
            yield service_pb2.ModelStreamInferResponse(infer_response=message)
