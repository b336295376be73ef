"""The KServe v2 surface on both protocols: health, metadata, config, index, every task."""

from __future__ import annotations

import queue

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.wire import image_input, objects, tone, wav


def test_health_on_both_protocols(grpc_client, http_client):
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert grpc_client.get_server_metadata().name == "variant-gateway"
    assert http_client.get_server_metadata()["name"] == "variant-gateway"


@pytest.mark.parametrize(
    ("model", "ready"),
    [("digits", True), ("digits__int8", True), ("flaky__int8", False), ("broken", False)],
)
def test_model_ready(grpc_client, http_client, model, ready):
    assert grpc_client.is_model_ready(model) is ready
    assert http_client.is_model_ready(model) is ready


def test_metadata_reports_task_level_tensors(grpc_client, http_client):
    meta = grpc_client.get_model_metadata("digits")
    assert meta.platform == "variant-router"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("image", "BYTES", [-1])]
    assert [t.name for t in meta.outputs] == ["labels", "scores"]
    pinned = http_client.get_model_metadata("speech__int8")
    assert pinned["platform"] == "onnxruntime_onnx"
    assert pinned["inputs"] == [{"name": "audio", "datatype": "FP32", "shape": [-1, -1]}]
    text = grpc_client.get_model_metadata("translation", model_version="1")
    assert [t.datatype for t in text.inputs] == ["BYTES"]


def test_config_through_the_real_proto(grpc_client, http_client):
    config = grpc_client.get_model_config("digits").config
    assert config.input[0].name == "image"
    assert config.parameters["variants"].string_value == "fp32,fp16,int8,pruned-50-int8"
    http_config = http_client.get_model_config("digits__int8")
    assert http_config["output"][1]["data_type"] == "TYPE_FP32"
    assert http_config["parameters"]["quality"]["string_value"] == "96"


def test_repository_index(grpc_client, http_client):
    rows = {m.name: m for m in grpc_client.get_model_repository_index().models}
    assert rows["digits"].state == "READY"
    assert rows["digits__pruned-75"].state == "UNAVAILABLE"
    assert "rejected" in rows["digits__pruned-75"].reason
    assert rows["flaky__int8"].state == "UNAVAILABLE"
    assert "invalid manifest" in rows["broken"].reason
    http_rows = {m["name"]: m for m in http_client.get_model_repository_index()}
    assert http_rows.keys() == rows.keys()


def test_images_as_png_bytes_and_uint8(wire):
    result = wire.infer("digits", image_input(10, 250), parameters={"top_k": 3})
    assert result.outputs["labels"].shape == (2, 3)
    assert [row[0] for row in result.outputs["labels"]] == [b"0", b"9"]
    assert result.outputs["scores"].dtype == np.float32
    assert np.all(np.diff(result.outputs["scores"], axis=1) <= 0)
    batch = np.stack([np.zeros((8, 8, 3), np.uint8), np.full((8, 8, 3), 255, np.uint8)])
    as_array = wire.infer("digits", [("image", "UINT8", batch)])
    assert [row[0] for row in as_array.outputs["labels"]] == [b"0", b"9"]
    one = wire.infer("digits", [("image", "UINT8", np.full((16, 12, 3), 255, np.uint8))])
    assert one.outputs["labels"].shape == (1, 5)


def test_speech_waveform_and_wav(wire):
    waves = np.stack([np.zeros(8000, np.float32), tone(0.5)])
    result = wire.infer("speech", [("audio", "FP32", waves)])
    assert list(result.outputs["text"]) == [b"", b"a"]
    single = wire.infer("speech", [("audio", "FP32", tone(0.3))])
    assert list(single.outputs["text"]) == [b"a"]
    files = wire.infer("speech__int8", [("audio", "BYTES", objects(wav(tone(0.4))))])
    assert list(files.outputs["text"]) == [b"a"]
    assert files.variant == "int8" and files.reason == "pinned"


def test_translation_runs_the_decode_loop(wire):
    texts = objects(b"hello world", b"the cat sat on the mat")
    result = wire.infer("translation", [("text", "BYTES", texts)])
    assert list(result.outputs["text"]) == [b"hello world", b"the cat sat on the mat"]


def test_requested_outputs_only(wire):
    result = wire.infer("digits", image_input(0), outputs=["scores"])
    assert list(result.outputs) == ["scores"]


def test_grpc_trailing_metadata_names_the_variant(gw):
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits")
        tensor = request.inputs.add(name="image", datatype="BYTES", shape=[1])
        tensor.contents.bytes_contents.append(image_input(0)[0][2][0])
        response, call = stub.ModelInfer.with_call(
            request, metadata=[("x-latency-budget-ms", "15")]
        )
    metadata = dict(call.trailing_metadata())
    assert metadata["x-variant"] == "fp16"
    assert metadata["x-selection-reason"] == "latency-budget"
    assert response.parameters["served_model"].string_param == "digits__fp16"


def test_http_json_body_and_headers(gw):
    body = {
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello world"]}],
        "parameters": {"min_accuracy": 29},
    }
    response = httpx.post(f"http://{gw.http_url}/v2/models/translation/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-variant"] == "fp32"
    doc = response.json()
    assert doc["outputs"][0]["data"] == ["hello world"]
    assert doc["parameters"]["selection_reason"] == "most-accurate"
    numeric = {
        "inputs": [
            {"name": "image", "shape": [1, 8, 8, 1], "datatype": "UINT8", "data": [[255] * 64]}
        ],
        "outputs": [{"name": "labels"}],
    }
    response = httpx.post(
        f"http://{gw.http_url}/v2/models/digits/versions/1/infer",
        json=numeric,
        headers={"x-gpu-memory-budget-mb": "20"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"][0] == "9"
    assert response.headers["x-selection-reason"] == "gpu-memory-budget"


def test_grpc_stream_answers_each_request(gw):
    results: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for level in (0, 255):
            tensor = grpcclient.InferInput("image", [1], "BYTES")
            tensor.set_data_from_numpy(image_input(level)[0][2])
            client.async_stream_infer("digits", [tensor])
        client.async_stream_infer("nope", [tensor])
        got = [results.get(timeout=30) for _ in range(3)]
    finally:
        client.stop_stream()
        client.close()
    labels = [r.as_numpy("labels")[0][0] for r, e in got[:2]]
    assert labels == [b"0", b"9"]
    assert got[2][0] is None and "NOT_FOUND" in str(got[2][1])


def test_openapi_documents_the_infer_body(gw):
    schema = httpx.get(f"http://{gw.http_url}/openapi.json").json()
    assert "/v2/models/{name}/infer" in schema["paths"]
    assert "InferRequestBody" in schema["components"]["schemas"]
    assert "RequestInput" in schema["components"]["schemas"]
