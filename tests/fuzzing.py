"""Hypothesis strategies for KServe v2 requests, shared by the decoder and wire fuzz tests.

They draw near-valid requests (real datatypes, small shapes, data sized to the shape) as
often as broken ones (wrong counts, stray fields, random bytes), so generated cases reach
past the first check into the deeper decoders.
"""

from __future__ import annotations

import io
import json
import struct
import wave
from typing import Any

import numpy as np
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2

from gateway.http.convert import HEADER_LENGTH
from gateway.tensors import NUMPY_DTYPES

DATATYPES = [*NUMPY_DTYPES, "BYTES"]
MODEL_NAMES = st.sampled_from(["digits", "digits__fp16", "speech", "translation", "nope", ""])
"""Served models of the fixture repository (and two that are not)."""

CONTENT_VALUES = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(2**31), 2**31 - 1),
    "int64_contents": st.integers(-(2**63), 2**63 - 1),
    "uint_contents": st.integers(0, 2**32 - 1),
    "uint64_contents": st.integers(0, 2**64 - 1),
    "fp32_contents": st.floats(width=32, allow_nan=True),
    "fp64_contents": st.floats(allow_nan=True),
    "bytes_contents": st.binary(max_size=16),
}
SHAPES = st.one_of(
    st.lists(st.integers(0, 6), max_size=4),
    st.lists(st.integers(-3, 2**40), max_size=3),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=9),
)
PARAMETER = st.one_of(
    st.builds(lambda v: service_pb2.InferParameter(bool_param=v), st.booleans()),
    st.builds(
        lambda v: service_pb2.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)
    ),
    st.builds(lambda v: service_pb2.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.builds(lambda v: service_pb2.InferParameter(double_param=v), st.floats()),
    st.builds(lambda v: service_pb2.InferParameter(string_param=v), st.text(max_size=12)),
    st.just(service_pb2.InferParameter()),
)
PARAMETER_NAMES = st.sampled_from(
    ["latency_budget_ms", "gpu_memory_budget_mb", "min_accuracy", "timeout", "top_k", "x"]
)


@st.composite
def grpc_tensors(draw: st.DrawFn) -> tuple[Any, bytes | None]:
    datatype = draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=6)))
    shape = draw(SHAPES)
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=draw(st.text(max_size=8)), datatype=datatype, shape=shape
    )
    count = int(np.prod(shape)) if shape and all(0 <= d < 64 for d in shape) else 3
    for field in draw(st.lists(st.sampled_from(sorted(CONTENT_VALUES)), max_size=2)):
        values = draw(st.lists(CONTENT_VALUES[field], min_size=count, max_size=count + 1))
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
    """A ``ModelInferRequest``: tensors, raw contents, parameters and outputs, often broken."""
    message = service_pb2.ModelInferRequest(
        model_name=draw(st.one_of(MODEL_NAMES, st.text(max_size=12))),
        model_version=draw(st.text(max_size=3)),
        id=draw(st.text(max_size=300)),
    )
    tensors = draw(st.lists(grpc_tensors(), max_size=3))
    raws = [raw for _, raw in tensors if raw is not None]
    for tensor, _ in tensors:
        message.inputs.append(tensor)
    if raws and draw(st.booleans()):
        message.raw_input_contents.extend(raws)  # possibly fewer than inputs: refused
    for name, value in draw(st.dictionaries(PARAMETER_NAMES, PARAMETER, max_size=3)).items():
        message.parameters[name].CopyFrom(value)
    for name in draw(st.lists(st.text(max_size=6), max_size=2)):
        message.outputs.add(name=name)
    return message


HEADERS = st.dictionaries(
    st.sampled_from(["x-latency-budget-ms", "x-gpu-memory-budget-mb", "x-min-accuracy", "x"]),
    st.one_of(st.text(max_size=8), st.sampled_from(["5", "-1", "nan", "1e309", "0"])),
    max_size=3,
)


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=8),
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def http_inputs(draw: st.DrawFn) -> dict[str, Any]:
    item: dict[str, Any] = {
        "name": draw(st.sampled_from(["image", "text", "audio", ""])),
        "shape": draw(st.one_of(st.lists(st.integers(-2, 5), max_size=3), JSON)),
        "datatype": draw(st.one_of(st.sampled_from(DATATYPES), st.text(max_size=5))),
    }
    if draw(st.booleans()):
        item["data"] = draw(
            st.one_of(
                JSON, st.lists(st.one_of(st.integers(0, 255), st.text(max_size=4)), max_size=64)
            )
        )
    if draw(st.booleans()):
        item["parameters"] = draw(
            st.dictionaries(
                st.sampled_from(["binary_data_size", "x"]),
                st.one_of(st.integers(-5, 64), JSON_SCALARS),
                max_size=2,
            )
        )
    if draw(st.integers(0, 9)) == 0:
        item[draw(st.text(max_size=5))] = draw(JSON)
    return item


@st.composite
def http_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 JSON body, sometimes with a binary tail and its header length."""
    doc: dict[str, Any] = {"inputs": draw(st.lists(http_inputs(), max_size=3))}
    if draw(st.booleans()):
        doc["id"] = draw(st.text(max_size=300))
    if draw(st.booleans()):
        doc["parameters"] = draw(st.dictionaries(PARAMETER_NAMES, JSON_SCALARS, max_size=3))
    if draw(st.booleans()):
        doc["outputs"] = draw(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=6)}), max_size=2)
        )
    head = json.dumps(doc).encode()
    if draw(st.booleans()):
        return head, {}
    tail = draw(st.binary(max_size=128))
    length = draw(st.one_of(st.just(len(head)), st.integers(-3, len(head) + len(tail) + 3)))
    return head + tail, {HEADER_LENGTH: str(length)}


# -- task payloads: real files, mutated ------------------------------------------------


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


@st.composite
def task_requests(draw: st.DrawFn) -> tuple[str, str, str, list[int], bytes]:
    """``(model, input, datatype, shape, raw bytes)`` of a task input whose payload is a
    mutated real file (image, WAV), random text, or random samples; framed correctly, so
    it reaches the task decoders behind the wire decoders."""
    kind = draw(st.sampled_from(["image", "wav", "samples", "text"]))
    if kind in ("image", "wav"):
        files = draw(
            st.lists(mutated(SEED_IMAGES if kind == "image" else SEED_WAVS), min_size=1, max_size=3)
        )
        raw = b"".join(struct.pack("<I", len(f)) + f for f in files)
        model, name = ("digits", "image") if kind == "image" else ("speech", "audio")
        return model, name, "BYTES", [len(files)], raw
    if kind == "samples":
        values = draw(
            st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), max_size=400)
        )
        array = np.asarray(values, "<f4")
        return "speech", "audio", "FP32", [1, array.size], array.tobytes()
    texts = draw(
        st.lists(
            st.one_of(
                st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")),
                st.binary(max_size=30),
            ),
            min_size=1,
            max_size=4,
        )
    )
    raw = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    return "translation", "text", "BYTES", [len(texts)], raw
