"""Bounded property-based fuzzing of every decoder a request passes through.

Each property feeds generated input (random bytes, near-valid messages and bodies, mutated
real files) to one decoder and allows exactly two outcomes: a decoded result, or a
client error from the error table (4xx, with a message). Anything else, a crash, a
RecursionError or a MemoryError, fails the property with the input that caused it.
Examples per property are fixed (``FUZZ_EXAMPLES``, 300), the database is off, so a run costs
about the same on every machine.
"""

from __future__ import annotations

import io
import json
import os
import struct
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2

from gateway.budget import parse_budget, parse_timeout_s
from gateway.errors import GatewayError
from gateway.grpc import convert as grpc_convert
from gateway.http import convert as http_convert
from gateway.limits import Limits, json_depth
from gateway.taskio import ImageIO, TextIO
from gateway.tasks.base import TaskInputError
from gateway.tasks.speech import SpeechTask
from gateway.tasks.vision import decode_image
from gateway.tensors import NUMPY_DTYPES
from gateway.types import NamedTensor, bytes_array

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
DATATYPES = [*NUMPY_DTYPES, "BYTES"]


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

_CONTENT_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32, allow_nan=True),
    "fp64_contents": st.floats(allow_nan=True),
    "bytes_contents": st.binary(max_size=16),
}
_SHAPES = st.one_of(
    st.lists(st.integers(0, 6), max_size=4),
    st.lists(st.integers(-3, 2**40), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=9),
)
_PARAMETER = st.one_of(
    st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
    st.builds(
        lambda v: service_pb2.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)
    ),
    st.builds(lambda v: service_pb2.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=12)),
    st.just(service_pb2.InferParameter()),
)
_PARAMETER_NAMES = st.sampled_from(
    ["latency_budget_ms", "gpu_memory_budget_mb", "min_accuracy", "timeout", "top_k", "x"]
)


@st.composite
def grpc_tensors(draw: st.DrawFn) -> tuple[Any, bytes | None]:
    datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6)))
    shape = draw(_SHAPES)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=draw(st.text(max_size=8)), datatype=datatype, shape=shape
    )
    count = int(np.prod(shape)) if shape and all(0 <= d < 64 for d in shape) else 3
    for field in draw(st.lists(st.sampled_from(sorted(_CONTENT_VALUES)), max_size=2)):
        values = draw(st.lists(_CONTENT_VALUES[field], min_size=count, max_size=count + 1))
        getattr(tensor.contents, field).extend(values)
    raw: bytes | None = None
    kind = draw(st.sampled_from(["none", "exact", "random"]))
    if kind == "exact" and datatype in NUMPY_DTYPES:
        size = count * NUMPY_DTYPES[datatype].itemsize
        raw = draw(st.binary(min_size=size, max_size=size + 8))
    elif kind == "exact" and datatype == "BYTES":
        items = draw(st.lists(st.binary(max_size=8), min_size=count, max_size=count))
        raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
    elif kind == "random":
        raw = draw(st.binary(max_size=256))
    return tensor, raw


@st.composite
def grpc_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(
        model_name=draw(st.text(max_size=12)),
        model_version=draw(st.text(max_size=3)),
        id=draw(st.text(max_size=300)),
    )
    tensors = draw(st.lists(grpc_tensors(), max_size=3))
    raws = [raw for _, raw in tensors if raw is not None]
    for tensor, _ in tensors:
        message.inputs.append(tensor)
    if raws and draw(st.booleans()):
        message.raw_input_contents.extend(raws)  # possibly fewer than inputs: refused
    for name, value in draw(st.dictionaries(_PARAMETER_NAMES, _PARAMETER, max_size=3)).items():
        message.parameters[name].CopyFrom(value)
    for name in draw(st.lists(st.text(max_size=6), max_size=2)):
        message.outputs.add(name=name)
    return message


_HEADERS = st.dictionaries(
    st.sampled_from(["x-latency-budget-ms", "x-gpu-memory-budget-mb", "x-min-accuracy", "x"]),
    st.one_of(st.text(max_size=8), st.sampled_from(["5", "-1", "nan", "1e309", "0"])),
    max_size=3,
)


def _check_request_fields(request: Any) -> None:
    decoded_or_refused(lambda: parse_budget(request.parameters, request.headers))
    decoded_or_refused(lambda: parse_timeout_s(request.parameters))


@FUZZ
@given(message=grpc_requests(), headers=_HEADERS)
def test_grpc_request_decoder(message, headers):
    serialized = message.SerializeToString()
    parsed = service_pb2.ModelInferRequest.FromString(serialized)
    request = decoded_or_refused(lambda: grpc_convert.infer_request(parsed, headers, None, LIMITS))
    if request is not None:
        _check_request_fields(request)
        for tensor in request.inputs:
            assert tensor.data.size <= LIMITS.max_tensor_elements


# -- HTTP bodies ------------------------------------------------------------------------

_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def http_inputs(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": draw(st.sampled_from(["image", "text", "audio", ""])),
        "shape": draw(st.one_of(st.lists(st.integers(-2, 5), max_size=3), _JSON)),
        "datatype": draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5))),
    }
    if draw(st.booleans()):
        item["data"] = draw(
            st.one_of(
                _JSON, st.lists(st.one_of(st.integers(0, 255), st.text(max_size=4)), max_size=64)
            )
        )
    if draw(st.booleans()):
        item["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_size", "x"]),
                st.one_of(st.integers(-5, 64), _JSON_SCALARS),
                max_size=2,
            )
        )
    if draw(st.integers(0, 9)) == 0:
        item[draw(st.text(max_size=5))] = draw(_JSON)
    return item


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    doc: dict[str, Any] = {"inputs": draw(st.lists(http_inputs(), max_size=3))}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=300))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(_PARAMETER_NAMES, _JSON_SCALARS, max_size=3))
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)}), max_size=2)
        )
    head = json.dumps(doc).encode()
    if draw(st.booleans()):
        return head, {}
    tail = draw(st.binary(max_size=128))
    length = draw(st.one_of(st.just(len(head)), st.integers(-3, len(head) + len(tail) + 3)))
    return head + tail, {http_convert.HEADER_LENGTH: str(length)}


@FUZZ
@given(body=http_bodies(), headers=_HEADERS)
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
@given(value=_JSON)
def test_json_depth_matches_the_parsed_depth(value):
    def depth(node: Any) -> int:
        if isinstance(node, list):
            return 1 + max((depth(x) for x in node), default=0)
        if isinstance(node, dict):
            return 1 + max((depth(x) for x in node.values()), default=0)
        return 0

    assert json_depth(json.dumps(value).encode()) == depth(value)


# -- task decoders: images, WAV, text ---------------------------------------------------


def _encoded(fmt: str, size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(size[0] * 31 + size[1])
    pixels = rng.integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if mode == "L" else pixels, mode).save(buffer, format=fmt)
    return buffer.getvalue()


SEED_IMAGES = [
    _encoded(fmt, size, mode)
    for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
    for size, mode in (((9, 7), "RGB"), ((16, 16), "L"))
    if not (fmt == "JPEG" and mode == "RGBA")
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed file with bytes flipped, cut, duplicated or a header field overwritten."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "dup", "set32"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            data = data[: draw(st.integers(0, len(data)))]
        elif op == "dup":
            data[at:at] = data[at : at + draw(st.integers(0, 64))]
        elif op == "set32" and at + 4 <= len(data):
            data[at : at + 4] = struct.pack(">I", draw(st.sampled_from([0, 1, 2**16, 2**31 - 1])))
    return bytes(data)


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


def _wav(rate_hz: int, width: int, channels: int, frames: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate_hz)
        w.writeframes(bytes((i * 37) % 256 for i in range(frames * width * channels)))
    return buffer.getvalue()


SEED_WAVS = [
    _wav(rate, width, channels, 400)
    for rate, width, channels in ((16000, 2, 1), (8000, 1, 2), (44100, 3, 1), (22050, 4, 2))
]


@pytest.fixture(scope="module")
def speech_task(tmp_path_factory) -> SpeechTask:
    assets = tmp_path_factory.mktemp("speech")
    spec = {
        "features": {},
        "output_frames": {"kernel": 5, "stride": 2, "padding": 2},
        "vocabulary": ["_", " ", "a"],
        "blank_index": 0,
        "max_duration_s": 10.0,
    }
    (assets / "speech.json").write_text(json.dumps(spec), encoding="utf-8")
    return SpeechTask(assets)


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
        features = speech_task.features(item)
    except TaskInputError as exc:
        assert str(exc)
        return
    assert features.ndim == 2 and np.isfinite(features).all()


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
