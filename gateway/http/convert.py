"""KServe v2 HTTP/REST bodies ↔ the data plane's types, JSON and binary-tensor extension.

With the binary extension (what ``tritonclient.http`` sends) the body is a JSON header of
``Inference-Header-Content-Length`` bytes followed by the raw tensors, each input saying its
size in ``parameters.binary_data_size``. Responses use the same layout for outputs asked for
with ``binary_data`` (or all outputs with the request parameter ``binary_data_output``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr
from pydantic import ValidationError as PydanticValidationError

from gateway.errors import InvalidRequestError, PayloadTooLargeError
from gateway.limits import DEFAULT_LIMITS, Limits
from gateway.tensors import check_shape, from_json, from_raw, to_json, to_raw
from gateway.types import InferRequest, InferResponse, NamedTensor, ParamValue

HEADER_LENGTH = "inference-header-content-length"
"""Header giving the JSON part's length when binary tensors follow it."""

Parameter = StrictBool | StrictInt | StrictFloat | StrictStr


class _Body(BaseModel):
    # Strict: a typo such as "paramters" is an error rather than silently ignored.
    model_config = ConfigDict(extra="forbid")


class RequestInput(_Body):
    """One input tensor of an inference request."""

    name: str
    shape: list[StrictInt]
    datatype: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)
    data: Any = Field(None, description="Row-major values (flat or nested); absent if binary.")


class RequestOutput(_Body):
    """An output the client asks for."""

    name: str
    parameters: dict[str, Parameter] = Field(default_factory=dict)


class InferRequestBody(_Body):
    """The JSON part of a KServe v2 inference request."""

    id: str = ""
    parameters: dict[str, Parameter] = Field(
        default_factory=dict,
        description="Budgets (latency_budget_ms, gpu_memory_budget_mb, min_accuracy), "
        "timeout (µs) and task options (top_k).",
    )
    inputs: list[RequestInput]
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """One output tensor of a response."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Parameter] | None = None
    data: list[Any] | None = None


class InferResponseBody(BaseModel):
    """The JSON part of a KServe v2 inference response."""

    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Parameter] = Field(
        description="variant, served_model, selection_reason, selection_detail."
    )
    outputs: list[ResponseOutput]


@dataclass(frozen=True)
class ParsedRequest:
    """A request ready for the data plane, plus how the client wants outputs encoded."""

    request: InferRequest
    binary_outputs: frozenset[str]
    binary_by_default: bool


def decompress(body: bytes, encoding: str | None, limit_bytes: int) -> bytes:
    """Undo ``Content-Encoding: gzip|deflate``, refusing output above ``limit_bytes``.

    Raises:
        InvalidRequestError: Unknown encoding or corrupt data.
        PayloadTooLargeError: The decompressed body is too large.
    """
    if not encoding or encoding.lower() == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding.lower())
    if wbits is None:
        raise InvalidRequestError(f"unsupported Content-Encoding {encoding!r}")
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit_bytes + 1)
    except zlib.error as exc:
        raise InvalidRequestError(f"cannot decompress the {encoding} body: {exc}") from exc
    if len(out) > limit_bytes or inflater.unconsumed_tail:
        raise PayloadTooLargeError(f"decompressed body exceeds {limit_bytes} bytes")
    return out


def _header_length(value: str | None, body_bytes: int) -> int | None:
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise InvalidRequestError(f"{HEADER_LENGTH} must be an integer, got {value!r}") from None
    if not 0 < length <= body_bytes:
        raise InvalidRequestError(
            f"{HEADER_LENGTH} {length} is outside the body of {body_bytes} bytes"
        )
    return length


def _validation_message(exc: PydanticValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"invalid request body at '{where}': {first['msg']}{more}"


def _inputs(body: InferRequestBody, binary: memoryview, limits: Limits) -> list[NamedTensor]:
    tensors: list[NamedTensor] = []
    offset = 0
    for item in body.inputs:
        shape = check_shape(item.name, item.datatype, item.shape)
        limits.check_tensor(item.name, item.datatype, shape)
        size = item.parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidRequestError(f"input '{item.name}': invalid binary_data_size")
            if item.data is not None:
                raise InvalidRequestError(
                    f"input '{item.name}': give either data or binary_data_size, not both"
                )
            if offset + size > len(binary):
                raise InvalidRequestError(
                    f"input '{item.name}': binary_data_size {size} overruns the body"
                )
            chunk = binary[offset : offset + size]
            offset += size
            data = from_raw(item.name, item.datatype, shape, chunk)
        elif item.data is None:
            raise InvalidRequestError(f"input '{item.name}' has neither data nor binary data")
        else:
            data = from_json(item.name, item.datatype, shape, item.data)
        tensors.append(NamedTensor(item.name, item.datatype, data))
    if offset != len(binary):
        raise InvalidRequestError(
            f"{len(binary) - offset} bytes of binary data are not claimed by any input"
        )
    return tensors


def parse_infer(
    body: bytes,
    model_name: str,
    model_version: str,
    headers: Mapping[str, str],
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedRequest:
    """Parse an inference request body (JSON, or JSON header + binary tensors).

    Args:
        body: The (decompressed) request body.
        model_name: From the URL.
        model_version: From the URL, or empty.
        headers: Request headers with lower-case names.
        limits: JSON depth and tensor size limits, checked before decoding.

    Raises:
        InvalidRequestError: Malformed JSON, structure, tensors or binary layout, or a body
            over ``limits``.
    """
    length = _header_length(headers.get(HEADER_LENGTH), len(body))
    head = body if length is None else body[:length]
    limits.check_json(head)
    try:
        raw = json.loads(head)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidRequestError("request body must be a JSON object")
    try:
        parsed = InferRequestBody.model_validate(raw)
    except PydanticValidationError as exc:
        raise InvalidRequestError(_validation_message(exc)) from exc
    limits.check_request_id(parsed.id)
    binary = memoryview(body)[length:] if length is not None else memoryview(b"")
    params: dict[str, ParamValue] = dict(parsed.parameters)
    outputs = parsed.outputs or []
    binary_outputs = frozenset(o.name for o in outputs if o.parameters.get("binary_data") is True)
    request = InferRequest(
        model_name=model_name,
        model_version=model_version,
        request_id=parsed.id,
        inputs=_inputs(parsed, binary, limits),
        parameters=params,
        headers=headers,
        requested_outputs=[o.name for o in outputs] or None,
        protocol="http",
    )
    return ParsedRequest(request, binary_outputs, params.get("binary_data_output") is True)


def render_infer(response: InferResponse, parsed: ParsedRequest) -> tuple[bytes, int | None]:
    """Encode a response; returns the body and the JSON header length if binary follows."""
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if parsed.binary_by_default or tensor.name in parsed.binary_outputs:
            raw = to_raw(tensor.data, tensor.datatype)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = to_json(tensor.data)
        outputs.append(entry)
    doc: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "parameters": response.parameters,
        "outputs": outputs,
    }
    if response.request_id:
        doc["id"] = response.request_id
    head = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
