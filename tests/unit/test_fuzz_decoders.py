"""Bounded property-based fuzzing of every decoder a request passes through.

Each property feeds generated input (random bytes, near-valid messages and bodies, mutated
real files) to one decoder and allows exactly two outcomes: a decoded result, or a
client error from the error table (4xx, with a message). Anything else, a crash, a
RecursionError or a MemoryError, fails the property with the input that caused it.
Examples per property are fixed (``FUZZ_EXAMPLES``, 300), the database is off, so a run costs
about the same on every machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from gateway.budget import parse_budget, parse_timeout_s
from gateway.errors import GatewayError
from gateway.grpc import convert as grpc_convert
from gateway.http import convert as http_convert
from gateway.limits import Limits, json_depth
from gateway.taskio import ImageIO, TextIO
from gateway.tasks.base import TaskInputError
from gateway.tasks.speech import WhisperTask
from gateway.tasks.vision import decode_image
from gateway.types import NamedTensor, bytes_array
from tests.fuzzing import HEADERS, JSON, SEED_IMAGES, SEED_WAVS, grpc_requests, http_bodies, mutated

ZOO = Path(__file__).resolve().parents[2] / "builders" / "zoo"
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
"""Examples per property; raise it for a longer hunt (``FUZZ_EXAMPLES=5000 pytest ...``)."""
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LIMITS = Limits(max_items_per_request=16, max_tensor_elements=4096, max_json_depth=16)


def client_error(exc: BaseException) -> bool:
    """A failure the gateway answers 4xx with a message (anything else is a finding)."""
    return isinstance(exc, GatewayError) and 400 <= exc.http_status < 500 and bool(exc.message)


def decoded_or_refused(call: Any) -> Any:
    """The call's result, or None when it was refused as a client error."""
    try:
        return call()
    except GatewayError as exc:
        assert client_error(exc), f"{type(exc).__name__} {exc.http_status}: {exc.message}"
        return None


def within_limits(task: str, items: list[Any]) -> bool:
    """Whether ``items`` pass the limits (a refusal must be a client error)."""
    try:
        LIMITS.check_items(task, items)
    except GatewayError as exc:
        assert client_error(exc), exc.message
        return False
    return True


# -- gRPC ModelInferRequest -------------------------------------------------------------


def _check_request_fields(request: Any) -> None:
    decoded_or_refused(lambda: parse_budget(request.parameters, request.headers))
    decoded_or_refused(lambda: parse_timeout_s(request.parameters))


@FUZZ
@given(message=grpc_requests(), headers=HEADERS)
def test_grpc_request_decoder(message, headers):
    serialized = message.SerializeToString()
    parsed = service_pb2.ModelInferRequest.FromString(serialized)
    request = decoded_or_refused(lambda: grpc_convert.infer_request(parsed, headers, None, LIMITS))
    if request is not None:
        _check_request_fields(request)
        for tensor in request.inputs:
            assert tensor.data.size <= LIMITS.max_tensor_elements


# -- HTTP bodies ------------------------------------------------------------------------


@FUZZ
@given(body=http_bodies(), headers=HEADERS)
def test_http_structured_body_decoder(body, headers):
    raw, extra = body
    parsed = decoded_or_refused(
        lambda: http_convert.parse_infer(raw, "m", "", {**headers, **extra}, LIMITS)
    )
    if parsed is not None:
        _check_request_fields(parsed.request)


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=512),
        st.builds(lambda d: (b"[" * d) + b"1" + (b"]" * d), st.integers(0, 5000)),
        st.builds(lambda d: b'{"inputs": ' + (b"[" * d), st.integers(0, 5000)),
        st.builds(
            lambda n: b'{"id": "a", "inputs": [], "x": ' + b"9" * n + b"}", st.integers(1, 6000)
        ),
    ),
    length=st.one_of(st.none(), st.text(max_size=6)),
    encoding=st.one_of(st.none(), st.sampled_from(["gzip", "deflate", "br", "identity"])),
)
def test_http_raw_body_decoder(raw, length, encoding):
    headers = {} if length is None else {http_convert.HEADER_LENGTH: length}
    body = decoded_or_refused(lambda: http_convert.decompress(raw, encoding, 1 << 20))
    if body is not None:
        decoded_or_refused(lambda: http_convert.parse_infer(body, "m", "", headers, LIMITS))


@FUZZ
@given(value=JSON)
def test_json_depth_matches_the_parsed_depth(value):
    def depth(node: Any) -> int:
        if isinstance(node, list):
            return 1 + max((depth(x) for x in node), default=0)
        if isinstance(node, dict):
            return 1 + max((depth(x) for x in node.values()), default=0)
        return 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


# -- task decoders: images, WAV, text ---------------------------------------------------


@pytest.fixture(scope="module")
def image_io() -> ImageIO:
    return ImageIO(ZOO / "digits" / "assets")


def _image_tensor(item: bytes | np.ndarray) -> dict[str, NamedTensor]:
    if isinstance(item, bytes):
        return {"image": NamedTensor("image", "BYTES", bytes_array([item]))}
    return {"image": NamedTensor("image", "UINT8", item)}


@FUZZ
@given(
    item=st.one_of(
        mutated(SEED_IMAGES),
        st.binary(max_size=256),
        st.builds(
            lambda shape: np.zeros(shape, np.uint8),
            st.lists(st.integers(0, 40), min_size=2, max_size=5).map(tuple),
        ),
    )
)
def test_image_decoder(image_io, item):
    items = decoded_or_refused(lambda: image_io.items(_image_tensor(item)))
    if items is None or not within_limits("image-labels", items):
        return
    for x in items:
        try:
            pixels = decode_image(x) if isinstance(x, bytes) else x
            batch = image_io.task.preprocess([pixels])
        except TaskInputError as exc:
            assert str(exc)
            continue
        assert batch.shape == (1, 1, 8, 8) and np.isfinite(batch).all()


@pytest.fixture(scope="module")
def speech_task() -> WhisperTask:
    return WhisperTask(ZOO / "speech" / "assets")


@FUZZ
@given(
    item=st.one_of(
        mutated(SEED_WAVS),
        st.binary(max_size=128).map(lambda b: b"RIFF" + b[:4] + b"WAVEfmt " + b[4:]),
        st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=64).map(
            lambda v: np.asarray(v, np.float32)
        ),
    )
)
def test_wav_decoder(speech_task, item):
    if not within_limits("audio-text", [item]):
        return
    try:
        windows = speech_task.windows(speech_task.waveform(item))
    except TaskInputError as exc:
        assert str(exc)
        return
    assert windows and all(w.shape == (80, 3000) and np.isfinite(w).all() for w in windows)


@pytest.fixture(scope="module")
def text_io() -> TextIO:
    return TextIO(ZOO / "translation" / "assets")


@FUZZ
@given(
    items=st.lists(
        st.one_of(
            st.text(max_size=80).map(lambda t: t.encode("utf-8", errors="surrogatepass")),
            st.binary(max_size=40),
            st.integers(4000, 4200).map(lambda n: b"ab " * (n // 3)),  # about the limit
        ),
        max_size=20,
    )
)
def test_text_decoder(text_io, items):
    tensor = {"text": NamedTensor("text", "BYTES", bytes_array(items))}
    texts = decoded_or_refused(lambda: text_io.items(tensor))
    if texts is None or not within_limits("text-text", texts):
        return
    try:
        ids = text_io.task.encode(texts)
    except TaskInputError as exc:
        assert str(exc)
        return
    assert len(ids) == len(texts)
