"""One case per error row, on both protocols, asserted at the wire."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.support.wire import code_of, expected, image_input, objects, wav


@dataclass
class Case:
    model: str
    inputs: list[tuple[str, str, np.ndarray]]
    code: str
    message: str
    parameters: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    version: str = ""
    timeout_us: int | None = None


IMAGE = image_input(0)
CASES = {
    "unknown-model": Case("nope", IMAGE, "NOT_FOUND", "unknown model 'nope'"),
    "unknown-variant": Case("digits__fp64", IMAGE, "NOT_FOUND", "unknown variant 'fp64'"),
    "rejected-variant": Case("digits__pruned-75", IMAGE, "NOT_FOUND", "not published"),
    "unknown-version": Case("digits", IMAGE, "NOT_FOUND", "no version '2'", version="2"),
    "wrong-dtype": Case(
        "digits",
        [("image", "FP32", np.zeros((1, 8, 8, 3), np.float32))],
        "INVALID_ARGUMENT",
        "must be BYTES",
    ),
    "wrong-shape": Case(
        "digits",
        [("image", "UINT8", np.zeros((8, 8), np.uint8))],
        "INVALID_ARGUMENT",
        "UINT8 [B,H,W,C]",
    ),
    "wrong-input-name": Case(
        "digits", [("picture", "BYTES", objects(b"x"))], "INVALID_ARGUMENT", "named 'image'"
    ),
    "undecodable-image": Case(
        "digits", [("image", "BYTES", objects(b"not a png"))], "INVALID_ARGUMENT", "decode image"
    ),
    "undecodable-audio": Case(
        "speech", [("audio", "BYTES", objects(b"RIFFjunk"))], "INVALID_ARGUMENT", "decode audio"
    ),
    "empty-audio-file": Case(
        "speech", [("audio", "BYTES", objects(b""))], "INVALID_ARGUMENT", "empty audio"
    ),
    "audio-at-absurd-rate": Case(
        "speech",
        [("audio", "BYTES", objects(wav(np.zeros(500, np.float32), rate_hz=500)))],
        "INVALID_ARGUMENT",
        "sample rate",
    ),
    "nan-audio": Case(
        "speech",
        [("audio", "FP32", np.full(1600, np.nan, np.float32))],
        "INVALID_ARGUMENT",
        "NaN",
    ),
    "empty-text": Case(
        "translation", [("text", "BYTES", objects(b"   "))], "INVALID_ARGUMENT", "empty"
    ),
    "text-as-int": Case(
        "translation",
        [("text", "INT64", np.array([1, 2], np.int64))],
        "INVALID_ARGUMENT",
        "must be BYTES",
    ),
    "bad-top-k": Case("digits", IMAGE, "INVALID_ARGUMENT", "top_k", parameters={"top_k": 0}),
    "negative-budget": Case(
        "digits",
        IMAGE,
        "INVALID_ARGUMENT",
        "latency_budget_ms' must be > 0",
        parameters={"latency_budget_ms": -5},
    ),
    "non-numeric-budget-header": Case(
        "digits",
        IMAGE,
        "INVALID_ARGUMENT",
        "x-min-accuracy' must be a number",
        headers={"x-min-accuracy": "lots"},
    ),
    "budget-unsatisfiable": Case(
        "digits",
        IMAGE,
        "FAILED_PRECONDITION",
        "can meet the budget",
        parameters={"min_accuracy": 97.0, "latency_budget_ms": 8},
    ),
    "pinned-too-slow": Case(
        "digits__fp32",
        IMAGE,
        "FAILED_PRECONDITION",
        "fp32 profiled p50 20.0 ms",
        headers={"x-latency-budget-ms": "5"},
    ),
    "variant-unavailable": Case("flaky__int8", IMAGE, "UNAVAILABLE", "cannot serve"),
    "broken-manifest": Case("broken", IMAGE, "UNAVAILABLE", "invalid manifest"),
    "deadline": Case("slow__fp32", IMAGE, "DEADLINE_EXCEEDED", "deadline", timeout_us=50_000),
    "internal": Case("flaky__fp16", IMAGE, "INTERNAL", "internal error"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_error_row(wire, case):
    start = time.perf_counter()
    with pytest.raises(InferenceServerException) as info:
        wire.infer(
            case.model,
            case.inputs,
            parameters=case.parameters or None,
            headers=case.headers or None,
            version=case.version,
            timeout_us=case.timeout_us,
        )
    assert code_of(info.value, wire.protocol) == expected(case.code, wire.protocol)
    assert case.message in info.value.message()
    assert "Traceback" not in info.value.message()
    assert time.perf_counter() - start < 5.0


BINARY_HEAD = (
    b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES",'
    b' "parameters": {"binary_data_size": 99}}]}'
)


def test_oversize_payload(wire):
    big = [("image", "BYTES", objects(b"\0" * (3 * 1024 * 1024)))]
    with pytest.raises(InferenceServerException) as info:
        wire.infer("digits", big)
    assert code_of(info.value, wire.protocol) == expected("RESOURCE_EXHAUSTED", wire.protocol, 413)


@pytest.mark.parametrize(
    ("body", "headers", "message"),
    [
        (b"{not json", {}, "not valid JSON"),
        (b"[1, 2]", {}, "must be a JSON object"),
        (b'{"inputs": [], "paramters": {}}', {}, "paramters"),
        (
            b'{"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [1]}]}',
            {},
            "must be strings",
        ),
        (
            b'{"inputs": [{"name": "image", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}',
            {},
            "1 data elements for shape [2]",
        ),
        (
            BINARY_HEAD + b"tail",
            {"Inference-Header-Content-Length": str(len(BINARY_HEAD))},
            "overruns",
        ),
        (b'{"inputs": []}', {"Content-Encoding": "gzip"}, "cannot decompress"),
        (
            b'{"inputs": [{"name": "image", "shape": [1], "datatype": "COMPLEX", "data": [1]}]}',
            {},
            "unknown datatype",
        ),
    ],
    ids=["json", "not-object", "unknown-field", "bytes-type", "count", "binary", "gzip", "dtype"],
)
def test_http_malformed_bodies(gw, body, headers, message):
    response = httpx.post(
        f"http://{gw.http_url}/v2/models/digits/infer", content=body, headers=headers
    )
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_http_unknown_route_is_json_404(gw):
    response = httpx.get(f"http://{gw.http_url}/v2/nothing")
    assert response.status_code == 404
    assert "error" in response.json()


def test_still_serving_after_every_error(grpc_client, http_client):
    assert grpc_client.is_server_ready() and http_client.is_server_ready()
