"""KServe v2 protobuf messages ↔ the data plane's transport-free types."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2

from gateway.catalog import IndexEntry, ModelMetadata
from gateway.errors import InvalidRequestError
from gateway.layout import config_datatype
from gateway.limits import DEFAULT_LIMITS, Limits
from gateway.taskio import TensorInfo
from gateway.tensors import NUMPY_DTYPES, check_shape, element_count, from_raw, to_raw
from gateway.types import InferRequest, InferResponse, NamedTensor, ParamValue, bytes_array

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
"""Which typed ``InferTensorContents`` field carries each datatype (FP16 has none)."""


def parameter_value(param: service_pb2.InferParameter) -> ParamValue:
    """The Python value of one ``InferParameter``."""
    which = param.WhichOneof("parameter_choice")
    if which is None:
        raise InvalidRequestError("a request parameter has no value")
    value: ParamValue = getattr(param, which)
    return value


def parameters_dict(params: Mapping[str, service_pb2.InferParameter]) -> dict[str, ParamValue]:
    """All parameters of a message as a plain dict."""
    return {key: parameter_value(p) for key, p in params.items()}


def _filled_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor) -> list[str]:
    return [f.name for f, _ in tensor.contents.ListFields()]


def _input_tensor(
    tensor: service_pb2.ModelInferRequest.InferInputTensor, raw: bytes | None, limits: Limits
) -> NamedTensor:
    name, datatype = tensor.name, tensor.datatype
    shape = check_shape(name, datatype, list(tensor.shape))
    limits.check_tensor(name, datatype, shape)
    filled = _filled_contents(tensor)
    if raw is not None:
        if filled:  # Triton refuses the ambiguity too
            raise InvalidRequestError(
                f"input '{name}': contents must not be given when raw_input_contents is used"
            )
        return NamedTensor(name, datatype, from_raw(name, datatype, shape, raw))
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidRequestError(f"input '{name}': {datatype} data must be sent as raw contents")
    stray = [f for f in filled if f != field]
    if stray:
        raise InvalidRequestError(
            f"input '{name}': {datatype} data belongs in contents.{field}, not {', '.join(stray)}"
        )
    contents = getattr(tensor.contents, field)
    if len(contents) != element_count(shape):
        raise InvalidRequestError(
            f"input '{name}': {len(contents)} elements in contents for shape {list(shape)}"
        )
    if datatype == "BYTES":
        data = bytes_array([bytes(v) for v in contents])
    else:
        dtype = NUMPY_DTYPES[datatype]
        values = list(contents)
        if dtype.kind in "iu" and values:
            info = np.iinfo(dtype)
            if min(values) < info.min or max(values) > info.max:
                raise InvalidRequestError(f"input '{name}': value out of range for {datatype}")
        data = np.asarray(values, dtype=dtype)
    return NamedTensor(name, datatype, data.reshape(shape))


def infer_request(
    message: service_pb2.ModelInferRequest,
    headers: Mapping[str, str],
    timeout_s: float | None,
    limits: Limits = DEFAULT_LIMITS,
) -> InferRequest:
    """Convert a ``ModelInferRequest`` with its call metadata and deadline.

    Raises:
        InvalidRequestError: Malformed tensors or parameters, or a tensor over ``limits``.
    """
    limits.check_request_id(message.id)
    raw_contents = list(message.raw_input_contents)
    if raw_contents and len(raw_contents) != len(message.inputs):
        raise InvalidRequestError(
            f"{len(raw_contents)} raw_input_contents for {len(message.inputs)} inputs"
        )
    inputs = [
        _input_tensor(t, raw_contents[i] if raw_contents else None, limits)
        for i, t in enumerate(message.inputs)
    ]
    return InferRequest(
        model_name=message.model_name,
        model_version=message.model_version,
        request_id=message.id,
        inputs=inputs,
        parameters=parameters_dict(message.parameters),
        headers=headers,
        timeout_s=timeout_s,
        requested_outputs=[o.name for o in message.outputs] or None,
        protocol="grpc",
    )


def _set_parameter(param: service_pb2.InferParameter, value: ParamValue) -> None:
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    elif isinstance(value, float):
        param.double_param = value
    else:
        param.string_param = value


def infer_response(response: InferResponse) -> service_pb2.ModelInferResponse:
    """Convert a data-plane response; outputs travel as raw contents."""
    message = service_pb2.ModelInferResponse(
        model_name=response.model_name,
        model_version=response.model_version,
        id=response.request_id,
    )
    for key, value in response.parameters.items():
        _set_parameter(message.parameters[key], value)
    for output in response.outputs:
        message.outputs.add(name=output.name, datatype=output.datatype, shape=list(output.shape))
        message.raw_output_contents.append(to_raw(output.data, output.datatype))
    return message


def _tensor_metadata(
    infos: tuple[TensorInfo, ...],
) -> list[service_pb2.ModelMetadataResponse.TensorMetadata]:
    return [
        service_pb2.ModelMetadataResponse.TensorMetadata(
            name=i.name, datatype=i.datatype, shape=list(i.shape)
        )
        for i in infos
    ]


def metadata_response(metadata: ModelMetadata) -> service_pb2.ModelMetadataResponse:
    """A ``ModelMetadataResponse`` for a family or variant."""
    return service_pb2.ModelMetadataResponse(
        name=metadata.name,
        versions=list(metadata.versions),
        platform=metadata.platform,
        inputs=_tensor_metadata(metadata.inputs),
        outputs=_tensor_metadata(metadata.outputs),
    )


def model_config(metadata: ModelMetadata) -> model_config_pb2.ModelConfig:
    """The task-level ``ModelConfig`` of a family or variant, validated by the real proto.

    Shapes include the batch dimension, so ``max_batch_size`` is 0 here; the graph-level
    batch limit is reported as the ``graph_max_batch_size`` parameter.
    """

    def tensors(infos: tuple[TensorInfo, ...]) -> list[dict[str, Any]]:
        return [
            {"name": i.name, "data_type": config_datatype(i.datatype), "dims": list(i.shape)}
            for i in infos
        ]

    parameters = {k: {"string_value": v} for k, v in metadata.parameters.items()}
    parameters["graph_max_batch_size"] = {"string_value": str(metadata.max_batch_size)}
    config = {
        "name": metadata.name,
        "platform": metadata.platform,
        "max_batch_size": 0,
        "input": tensors(metadata.inputs),
        "output": tensors(metadata.outputs),
        "parameters": parameters,
    }
    return json_format.ParseDict(config, model_config_pb2.ModelConfig())


def index_response(entries: list[IndexEntry]) -> service_pb2.RepositoryIndexResponse:
    """A ``RepositoryIndexResponse``."""
    return service_pb2.RepositoryIndexResponse(
        models=[
            service_pb2.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
