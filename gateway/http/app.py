"""KServe v2 HTTP/REST API (FastAPI) over the data plane, plus Prometheus ``/metrics``.

Errors always answer ``{"error": "<message>"}`` (what ``tritonclient.http`` reads) with the
status from the error table; unknown failures answer 500 with a generic message.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.catalog import ModelMetadata
from gateway.config import GatewaySettings
from gateway.dataplane import DataPlane
from gateway.errors import GatewayError, InvalidRequestError, PayloadTooLargeError, status_of
from gateway.grpc.convert import model_config
from gateway.http import convert
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

DRAIN_FACTOR = 16
"""An oversize body is read and discarded up to this many times the limit, so the client
sees the 413 instead of a reset connection; beyond that the connection is dropped."""


class ErrorBody(BaseModel):
    """Every error response."""

    error: str


class TensorMetadataBody(BaseModel):
    """An input or output in model metadata."""

    name: str
    datatype: str
    shape: list[int]


class ModelMetadataBody(BaseModel):
    """Model metadata of a family or variant."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadataBody]
    outputs: list[TensorMetadataBody]


class IndexEntryBody(BaseModel):
    """One row of the repository index."""

    name: str
    version: str
    state: str
    reason: str


class ServerMetadataBody(BaseModel):
    """Server name and version."""

    name: str
    version: str
    extensions: list[str]


class IndexRequestBody(BaseModel):
    """Repository index filter."""

    ready: bool = False


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 413, 429, 500, 503, 504)
}


def error_response(exc: Exception) -> JSONResponse:
    """The JSON error answer for any exception (unknown ones logged, generic message)."""
    _, status, message = status_of(exc)
    if not isinstance(exc, GatewayError):
        log.error("unexpected error in an HTTP call", exc_info=exc)
        return JSONResponse({"error": message}, status_code=status)
    return JSONResponse({"error": message}, status_code=status, headers=dict(exc.http_headers))


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body, refusing more than ``limit_bytes``.

    Raises:
        PayloadTooLargeError: The body is larger than the limit.
    """
    declared = request.headers.get("content-length", "")
    too_large = declared.isdigit() and int(declared) > limit_bytes
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            too_large = True
        if too_large:
            if size > DRAIN_FACTOR * limit_bytes:
                break
            continue
        chunks.append(chunk)
    if too_large:
        raise PayloadTooLargeError(f"request body exceeds the limit of {limit_bytes} bytes")
    return b"".join(chunks)


def _metadata_body(metadata: ModelMetadata) -> dict[str, Any]:
    def tensors(infos: Any) -> list[dict[str, Any]]:
        return [{"name": i.name, "datatype": i.datatype, "shape": list(i.shape)} for i in infos]

    return {
        "name": metadata.name,
        "versions": list(metadata.versions),
        "platform": metadata.platform,
        "inputs": tensors(metadata.inputs),
        "outputs": tensors(metadata.outputs),
    }


def create_app(dataplane: DataPlane, metrics: GatewayMetrics, settings: GatewaySettings) -> FastAPI:
    """Build the HTTP application over a data plane."""
    app = FastAPI(
        title="variant-gateway",
        version=dataplane.info.version,
        description="KServe v2 inference that routes each request to the size variant "
        "fitting its budgets. Budgets: parameters latency_budget_ms, gpu_memory_budget_mb, "
        "min_accuracy or headers x-latency-budget-ms, x-gpu-memory-budget-mb, x-min-accuracy.",
    )

    _install_error_handlers(app)

    @app.get("/v2", response_model=ServerMetadataBody, tags=["server"])
    async def server_metadata() -> dict[str, Any]:
        """Server name, version and the protocol extensions it supports."""
        info = dataplane.info
        return {"name": info.name, "version": info.version, "extensions": list(info.extensions)}

    @app.get("/v2/health/live", tags=["server"])
    async def live() -> Response:
        """200 while the process serves."""
        return Response(status_code=200)

    @app.get("/v2/health/ready", tags=["server"], responses={503: {"model": ErrorBody}})
    async def ready() -> Response:
        """200 once the repository is loaded and some family can serve, else 503."""
        if dataplane.is_ready():
            return Response(status_code=200)
        return JSONResponse({"error": "no model can serve yet"}, status_code=503)

    @app.get(
        "/v2/models/{name}", response_model=ModelMetadataBody, responses=_ERRORS, tags=["models"]
    )
    @app.get(
        "/v2/models/{name}/versions/{version}",
        response_model=ModelMetadataBody,
        responses=_ERRORS,
        tags=["models"],
    )
    async def model_metadata(name: str, version: str = "") -> dict[str, Any]:
        """Task-level inputs and outputs of a family (routed) or variant (pinned)."""
        return _metadata_body(dataplane.model_metadata(name, version))

    @app.get("/v2/models/{name}/ready", responses=_ERRORS, tags=["models"])
    @app.get("/v2/models/{name}/versions/{version}/ready", responses=_ERRORS, tags=["models"])
    async def model_ready(name: str, version: str = "") -> Response:
        """200 if the model can serve now, 503 if it cannot, 404 if unknown."""
        if dataplane.model_ready(name, version):
            return Response(status_code=200)
        return JSONResponse({"error": f"model '{name}' is not ready"}, status_code=503)

    @app.get("/v2/models/{name}/config", responses=_ERRORS, tags=["models"])
    @app.get("/v2/models/{name}/versions/{version}/config", responses=_ERRORS, tags=["models"])
    async def config(name: str, version: str = "") -> dict[str, Any]:
        """The model configuration (Triton ``ModelConfig`` as JSON)."""
        proto = model_config(dataplane.model_metadata(name, version))
        body: dict[str, Any] = json_format.MessageToDict(proto, preserving_proto_field_name=True)
        return body

    infer_doc: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/InferRequestBody"}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                },
            },
        }
    }

    @app.post(
        "/v2/models/{name}/infer",
        response_model=convert.InferResponseBody,
        responses=_ERRORS,
        openapi_extra=infer_doc,
        tags=["inference"],
    )
    @app.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=convert.InferResponseBody,
        responses=_ERRORS,
        openapi_extra=infer_doc,
        tags=["inference"],
    )
    async def infer(name: str, request: Request, version: str = "") -> Response:
        """Route and run one inference request (JSON or binary-tensor extension).

        The response's ``parameters`` and the ``x-variant`` / ``x-selection-reason`` headers
        say which variant served it and why.
        """
        limit = settings.max_payload_bytes
        try:
            body = await read_body(request, limit)
            body = convert.decompress(body, request.headers.get("content-encoding"), limit)
            headers = {k.lower(): v for k, v in request.headers.items()}
            parsed = convert.parse_infer(body, name, version, headers, dataplane.limits)
            response = await dataplane.infer(parsed.request)
            content, header_length = convert.render_infer(response, parsed)
        except Exception as exc:  # answered here, so each failure is logged once
            return error_response(exc)
        out_headers = {
            "x-request-id": response.request_id,
            "x-variant": response.selection.variant,
            "x-selection-reason": response.selection.reason,
        }
        if header_length is None:
            return Response(content, media_type="application/json", headers=out_headers)
        out_headers[convert.HEADER_LENGTH] = str(header_length)
        return Response(content, media_type="application/octet-stream", headers=out_headers)

    @app.post("/v2/repository/index", response_model=list[IndexEntryBody], tags=["repository"])
    async def repository_index(request: Request) -> list[dict[str, Any]]:
        """Every family and variant with its state; ``{"ready": true}`` lists ready ones only."""
        raw = await request.body()
        ready_only = False
        if raw.strip():
            try:
                ready_only = IndexRequestBody.model_validate_json(raw).ready
            except ValueError as exc:
                raise InvalidRequestError(f"invalid index request: {exc}") from exc
        return [
            {"name": e.name, "version": e.version, "state": e.state, "reason": e.reason}
            for e in dataplane.repository_index(ready_only)
        ]

    @app.post("/v2/repository/models/{name}/load", responses=_ERRORS, tags=["repository"])
    async def repository_load(name: str) -> Response:
        """Read a family's manifest again now, serving it again if it was unloaded (admin)."""
        await dataplane.load_model(name)
        return Response(status_code=200)

    @app.post("/v2/repository/models/{name}/unload", responses=_ERRORS, tags=["repository"])
    async def repository_unload(name: str) -> Response:
        """Stop serving a family until it is loaded again (admin)."""
        await dataplane.unload_model(name)
        return Response(status_code=200)

    @app.get("/metrics", tags=["server"])
    async def prometheus() -> Response:
        """Prometheus exposition of every ``gateway_`` series."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    _install_openapi(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Answer every failure as ``{"error": ...}`` with the error table's status."""

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse(
            {"error": f"invalid request at '{where}': {first.get('msg', 'invalid')}"},
            status_code=400,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)


def _install_openapi(app: FastAPI) -> None:
    """Publish the inference request schema, which the raw-body route cannot declare."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            extra = convert.InferRequestBody.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(extra.pop("$defs", {}))
            components["InferRequestBody"] = extra
            # Keys are needed only where the gateway is configured with a key file.
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
