"""Wire converters: raw and JSON tensors, BYTES framing, HTTP bodies, gRPC messages."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2
from tritonclient.utils import serialize_byte_tensor

from gateway.catalog import ModelMetadata
from gateway.errors import InvalidRequestError, PayloadTooLargeError
from gateway.grpc import convert as grpc_convert
from gateway.http import convert as http_convert
from gateway.taskio import TensorInfo
from gateway.tensors import deserialize_bytes, from_json, from_raw, serialize_bytes, to_json, to_raw
from gateway.types import InferResponse, NamedTensor, Selection, bytes_array


def test_bytes_framing_matches_tritonclient():
    items = bytes_array([b"", b"abc", "ü".encode()])
    framed = serialize_bytes(items)
    assert framed == serialize_byte_tensor(items).item()
    assert list(deserialize_bytes("x", framed, 3)) == list(items)


@pytest.mark.parametrize(
    ("raw", "count", "message"),
    [(b"\x05\x00\x00\x00ab", 1, "overruns"), (b"\x01\x00", 1, "truncated"), (b"", 1, "0 BYTES")],
)
def test_bad_bytes_framing(raw, count, message):
    with pytest.raises(InvalidRequestError, match=message):
        deserialize_bytes("x", raw, count)


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "INT64", "UINT8", "BOOL", "FP64", "INT8"])
def test_raw_round_trip(datatype):
    from gateway.tensors import NUMPY_DTYPES

    array = (np.arange(12) % 2).astype(NUMPY_DTYPES[datatype]).reshape(3, 4)
    out = from_raw("x", datatype, [3, 4], to_raw(array))
    np.testing.assert_array_equal(out, array)


def test_raw_size_mismatch_says_what_was_expected():
    with pytest.raises(
        InvalidRequestError, match="8 bytes of data for FP32 shape \\[3\\], expected 12"
    ):
        from_raw("x", "FP32", [3], b"\0" * 8)


def test_json_nested_and_flat():
    assert from_json("x", "INT32", [2, 2], [[1, 2], [3, 4]]).tolist() == [[1, 2], [3, 4]]
    assert from_json("x", "FP32", [3], [1, 2.5, 3]).dtype == np.float32
    assert to_json(bytes_array([b"hi"])) == ["hi"]
    assert to_json(np.array([[1.5, 2]], np.float32)) == [1.5, 2.0]


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2], [1, "a"], "must be numbers"),
        ("INT64", [1], [1.5], "must be integers"),
        ("UINT8", [1], [300], "out of range"),
        ("BOOL", [1], [1], "true/false"),
        ("BYTES", [1], [1], "must be strings"),
        ("FP32", [-1], [1], "invalid shape"),
        ("FLOAT", [1], [1], "unknown datatype"),
        ("FP32", [2, 2], [1, 2, 3], "3 data elements for shape \\[2, 2\\]"),
    ],
)
def test_json_errors(datatype, shape, data, message):
    with pytest.raises(InvalidRequestError, match=message):
        from_json("x", datatype, shape, data)


def _binary_body(text: bytes) -> tuple[bytes, dict[str, str]]:
    raw = serialize_bytes(bytes_array([text]))
    head = json.dumps(
        {
            "id": "r1",
            "inputs": [
                {
                    "name": "text",
                    "shape": [1],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "text", "parameters": {"binary_data": True}}],
            "parameters": {"latency_budget_ms": 10},
        }
    ).encode()
    return head + raw, {http_convert.HEADER_LENGTH: str(len(head))}


def test_http_binary_request_and_response():
    body, headers = _binary_body(b"hello")
    parsed = http_convert.parse_infer(body, "translation", "", headers)
    request = parsed.request
    assert request.request_id == "r1"
    assert list(request.inputs[0].data) == [b"hello"]
    assert request.parameters == {"latency_budget_ms": 10}
    assert parsed.binary_outputs == {"text"}
    response = InferResponse(
        "translation",
        "1",
        "r1",
        [NamedTensor("text", "BYTES", bytes_array([b"hallo"]))],
        Selection("fp32", "translation__fp32", "most-accurate", "best"),
    )
    content, length = http_convert.render_infer(response, parsed)
    assert length is not None
    doc = json.loads(content[:length])
    assert doc["parameters"]["variant"] == "fp32"
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == len(content) - length
    assert deserialize_bytes("text", content[length:], 1)[0] == b"hallo"


def test_http_unclaimed_binary_bytes():
    body, headers = _binary_body(b"hello")
    with pytest.raises(InvalidRequestError, match="3 bytes of binary data are not claimed"):
        http_convert.parse_infer(body + b"xyz", "translation", "", headers)


def test_http_decompress_with_limit():
    assert http_convert.decompress(gzip.compress(b"abc"), "gzip", 10) == b"abc"
    with pytest.raises(PayloadTooLargeError):
        http_convert.decompress(gzip.compress(b"a" * 100), "gzip", 10)
    with pytest.raises(InvalidRequestError, match="unsupported Content-Encoding"):
        http_convert.decompress(b"abc", "br", 10)


def test_grpc_contents_and_raw_inputs():
    message = service_pb2.ModelInferRequest(model_name="speech", id="7")
    message.inputs.add(name="audio", datatype="FP32", shape=[1, 3]).contents.fp32_contents.extend(
        [0.1, 0.2, 0.3]
    )
    message.parameters["latency_budget_ms"].double_param = 5.0
    message.outputs.add(name="text")
    request = grpc_convert.infer_request(message, {"x-min-accuracy": "3"}, 0.5)
    assert request.inputs[0].data.shape == (1, 3)
    assert request.parameters == {"latency_budget_ms": 5.0}
    assert request.requested_outputs == ["text"]
    assert request.timeout_s == 0.5

    raw = service_pb2.ModelInferRequest(model_name="digits")
    raw.inputs.add(name="image", datatype="UINT8", shape=[1, 2, 2, 3])
    raw.raw_input_contents.append(bytes(12))
    assert grpc_convert.infer_request(raw, {}, None).inputs[0].data.dtype == np.uint8


@pytest.mark.parametrize(
    ("datatype", "field", "values", "message"),
    [
        ("FP32", "fp32_contents", [1.0], "1 elements in contents for shape \\[2\\]"),
        ("UINT8", "uint_contents", [300, 1], "out of range"),
    ],
)
def test_grpc_contents_errors(datatype, field, values, message):
    request = service_pb2.ModelInferRequest(model_name="m")
    getattr(request.inputs.add(name="x", datatype=datatype, shape=[2]).contents, field).extend(
        values
    )
    with pytest.raises(InvalidRequestError, match=message):
        grpc_convert.infer_request(request, {}, None)


def test_grpc_raw_count_mismatch():
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="FP32", shape=[1])
    request.inputs.add(name="b", datatype="FP32", shape=[1])
    request.raw_input_contents.append(bytes(4))
    with pytest.raises(InvalidRequestError, match="1 raw_input_contents for 2 inputs"):
        grpc_convert.infer_request(request, {}, None)


def test_model_config_is_valid_proto():
    metadata = ModelMetadata(
        name="digits",
        versions=("1",),
        platform="variant-router",
        task="image-labels",
        max_batch_size=8,
        inputs=(TensorInfo("image", "BYTES", (-1,)),),
        outputs=(TensorInfo("scores", "FP32", (-1, -1)),),
        parameters={"task": "image-labels"},
    )
    config = grpc_convert.model_config(metadata)
    assert model_config_pb2.DataType.Name(config.input[0].data_type) == "TYPE_STRING"
    assert list(config.output[0].dims) == [-1, -1]
    assert config.parameters["graph_max_batch_size"].string_value == "8"
