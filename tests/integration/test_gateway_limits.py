"""Each limit on a real gateway, both protocols: refused at once, named in the error."""

from __future__ import annotations

import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.wire import PROTOCOLS, Wire, code_of, objects, png, tone, wav

LIMITS = {
    "max_items_per_request": 8,
    "max_text_chars": 64,
    "max_audio_s": 1.0,
    "max_image_pixels": 32 * 32,
    "max_json_depth": 12,
    "max_tensor_elements": 100_000,
}


@pytest.fixture(scope="module")
def lgw(repo, module_gateway_factory):
    return module_gateway_factory(repo, task_threads=2, **LIMITS)


@pytest.fixture(params=PROTOCOLS)
def lwire(request, lgw) -> Wire:
    if request.param == "grpc":
        return Wire("grpc", grpcclient.InferenceServerClient(lgw.grpc_url))
    return Wire("http", httpclient.InferenceServerClient(lgw.http_url, network_timeout=30))


CASES = {
    "items": (
        "translation",
        [("text", "BYTES", objects(*[b"hello world"] * 5000))],
        "max_items_per_request",
    ),
    "numeric-items": (
        "speech",
        [("audio", "FP32", np.zeros((9, 1600), np.float32))],
        "max_items_per_request",
    ),
    "text": ("translation", [("text", "BYTES", objects(b"hello " * 20))], "max_text_chars"),
    "audio-samples": (
        "speech",
        [("audio", "FP32", tone(seconds=1.5))],
        "audio 0 is 1.5 s long; the limit is 1 s (max_audio_s)",
    ),
    "audio-wav": ("speech", [("audio", "BYTES", objects(wav(tone(2.0))))], "max_audio_s"),
    "image-file": ("digits", [("image", "BYTES", objects(png(0, size=40)))], "max_image_pixels"),
    "image-tensor": (
        "digits",
        [("image", "UINT8", np.zeros((1, 33, 32, 1), np.uint8))],
        "33 = 1056 pixels",
    ),
    "tensor-elements": (
        "speech",
        [("audio", "FP32", np.zeros((2, 60_000), np.float32))],
        "120000 elements; the limit is 100000 (max_tensor_elements)",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_a_request_over_a_limit_is_refused_by_name(lwire, case):
    model, inputs, message = case
    start = time.perf_counter()
    with pytest.raises(InferenceServerException) as info:
        lwire.infer(model, inputs)
    assert code_of(info.value, lwire.protocol) == (
        "INVALID_ARGUMENT" if lwire.protocol == "grpc" else 400
    )
    assert message in info.value.message()
    assert time.perf_counter() - start < 2.0  # refused before the work, not after it


def test_requests_within_the_limits_are_served(lwire):
    texts = objects(*[b"hello world"] * 8)
    assert lwire.infer("translation", [("text", "BYTES", texts)]).outputs["text"].shape == (8,)
    assert lwire.infer("digits", [("image", "BYTES", objects(png(255, size=32)))]).outputs
    assert lwire.infer("speech", [("audio", "FP32", tone(seconds=1.0))]).outputs


def test_deep_json_is_a_400_naming_the_limit_not_a_500(lgw):
    deep = b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": '
    deep += b"[" * 100_000 + b'"x"' + b"]" * 100_000 + b"}]}"
    response = httpx.post(f"http://{lgw.http_url}/v2/models/translation/infer", content=deep)
    assert response.status_code == 400
    assert "nested 100003 levels deep; the limit is 12 (max_json_depth)" in response.json()["error"]


def test_http_data_and_binary_data_together_are_refused(lgw):
    head = (
        b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"],'
        b' "parameters": {"binary_data_size": 5}}]}'
    )
    response = httpx.post(
        f"http://{lgw.http_url}/v2/models/translation/infer",
        content=head + b"\x01\x00\x00\x00b",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
    assert response.status_code == 400
    assert "either data or binary_data_size" in response.json()["error"]


def _grpc_infer(gw, request: service_pb2.ModelInferRequest) -> grpc.RpcError:
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.ModelInfer(request, timeout=10)
    return info.value


def test_grpc_raw_and_typed_contents_together_are_refused(lgw):
    request = service_pb2.ModelInferRequest(model_name="translation")
    tensor = request.inputs.add(name="text", datatype="BYTES", shape=[1])
    tensor.contents.bytes_contents.append(b"typed")
    request.raw_input_contents.append(b"\x03\x00\x00\x00raw")
    error = _grpc_infer(lgw, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "contents must not be given when raw_input_contents is used" in error.details()


@pytest.mark.parametrize(
    ("fill", "message"),
    [
        (lambda t: t.contents.int_contents.extend([1, 2]), "belongs in contents.fp32_contents"),
        (lambda t: t.contents.fp32_contents.extend([1.0] * 3), "3 elements in contents"),
    ],
    ids=["wrong-field", "wrong-count"],
)
def test_grpc_typed_contents_must_fit_datatype_and_shape(lgw, fill, message):
    request = service_pb2.ModelInferRequest(model_name="speech")
    tensor = request.inputs.add(name="audio", datatype="FP32", shape=[1, 2])
    fill(tensor)
    error = _grpc_infer(lgw, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


def test_grpc_bytes_tensors_are_counted_before_they_are_split(lgw):
    request = service_pb2.ModelInferRequest(model_name="translation")
    request.inputs.add(name="text", datatype="BYTES", shape=[100_000])
    request.raw_input_contents.append(b"\0\0\0\0" * 100_000)  # 100,000 empty strings
    start = time.perf_counter()
    error = _grpc_infer(lgw, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "100000 BYTES elements; the limit is 8 (max_items_per_request)" in error.details()
    assert time.perf_counter() - start < 2.0


def test_request_ids_must_be_short_and_printable(lgw):
    body = {
        "id": "x" * 300,
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}],
    }
    response = httpx.post(f"http://{lgw.http_url}/v2/models/translation/infer", json=body)
    assert response.status_code == 400 and "request id" in response.json()["error"]
    request = service_pb2.ModelInferRequest(model_name="translation", id="line\nbreak")
    request.inputs.add(name="text", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"a"
    )
    assert "printable" in _grpc_infer(lgw, request).details()
