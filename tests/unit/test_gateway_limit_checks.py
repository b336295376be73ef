"""Request limits: each checked before the work it bounds, each named in its error."""

from __future__ import annotations

import io
import json
import struct
import wave
import zlib

import numpy as np
import pytest
import soundfile
from PIL import Image
from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.errors import InvalidRequestError, LimitExceededError
from gateway.limits import Limits, image_size, json_depth
from gateway.tasks.audio import audio_seconds
from gateway.tasks.base import TaskInputError

LIMITS = Limits(
    max_items_per_request=4,
    max_text_chars=10,
    max_audio_s=2.0,
    max_image_pixels=100,
    max_json_depth=5,
    max_tensor_elements=1000,
)


def wav_bytes(seconds: float, rate_hz: int = 8000, channels: int = 2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes(b"\0\0" * channels * int(seconds * rate_hz))
    return buffer.getvalue()


def encoded(width: int, height: int, fmt: str, mode: str = "RGB", **options) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header claims a huge size: how a decompression bomb starts."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1024)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b"{}", 1),
        (b"[]", 1),
        (b"1", 0),
        (b'{"a": [[1, 2], [3]]}', 3),
        (b'{"a": "[[[[[[[[["}', 1),
        (b'{"a": "\\"[[[[", "b": ["\\\\", [1]]}', 3),
        (b'["\\\\\\"[[[["]', 1),
        (b"[" * 50 + b"]" * 50, 50),
        (b"[" * 50, 50),  # malformed: still measured, the parser rejects it after
    ],
)
def test_json_depth_counts_brackets_outside_strings(text, depth):
    assert json_depth(text) == depth
    if depth < 40 and text.count(b"[") == text.count(b"]"):
        assert json_depth(json.dumps(json.loads(text)).encode()) == depth


def test_deep_json_is_refused_by_name():
    LIMITS.check_json(b"[[[[[1]]]]]")
    with pytest.raises(
        LimitExceededError, match=r"nested 6 levels deep; the limit is 5 \(max_json"
    ):
        LIMITS.check_json(b"[[[[[[1]]]]]]")


def test_tensor_elements_are_counted_from_the_shape():
    LIMITS.check_tensor("x", "FP32", [10, 100])
    with pytest.raises(LimitExceededError, match=r"1001 elements.*max_tensor_elements"):
        LIMITS.check_tensor("x", "FP32", [7, 11, 13])
    with pytest.raises(LimitExceededError, match=r"5 BYTES elements.*max_items_per_request"):
        LIMITS.check_tensor("text", "BYTES", [5])
    LIMITS.check_tensor("x", "FP32", [0, 10**12])  # an empty tensor holds nothing


def test_too_many_items_are_refused_before_any_decoding():
    LIMITS.check_items("text-text", ["a"] * 4)
    with pytest.raises(LimitExceededError, match=r"5 items; the limit is 4"):
        LIMITS.check_items("text-text", ["a"] * 5)


def test_text_length():
    LIMITS.check_items("text-text", ["0123456789"])
    with pytest.raises(LimitExceededError, match=r"text 1 has 11 characters.*max_text_chars"):
        LIMITS.check_items("text-text", ["ok", "01234567890"])


def test_audio_seconds_from_the_sample_count_and_the_file_header():
    LIMITS.check_items("audio-text", [np.zeros(32000, np.float32), wav_bytes(2.0)])
    with pytest.raises(LimitExceededError, match=r"audio 0 is 2.1 s long.*max_audio_s"):
        LIMITS.check_items("audio-text", [np.zeros(33600, np.float32)])
    with pytest.raises(LimitExceededError, match=r"audio 1 is 3.0 s"):
        LIMITS.check_items("audio-text", [wav_bytes(1.0), wav_bytes(3.0)])
    assert audio_seconds(wav_bytes(1.5, rate_hz=22050, channels=1)) == pytest.approx(1.5, abs=1e-3)
    flac = io.BytesIO()
    soundfile.write(flac, np.zeros(3 * 8000, np.float32), 8000, format="FLAC")
    with pytest.raises(LimitExceededError, match=r"audio 0 is 3.0 s"):  # any format's header
        LIMITS.check_items("audio-text", [flac.getvalue()])


def test_a_wav_header_overstating_its_data_counts_the_bytes_present():
    data = wav_bytes(1.0)
    header = bytearray(data[:44])
    header[40:44] = struct.pack("<I", 10**9)  # a streaming encoder's "unknown" data size
    # The length is what the bytes present hold, not what the header claims.
    assert audio_seconds(bytes(header) + data[44:]) == pytest.approx(1.0, abs=0.01)


def test_image_pixels_from_the_header_or_the_tensor_shape():
    LIMITS.check_items(
        "image-labels", [encoded(10, 10, "PNG", "L"), np.zeros((10, 10, 3), np.uint8)]
    )
    with pytest.raises(LimitExceededError, match=r"image 0 is 11x10 = 110 pixels.*max_image"):
        LIMITS.check_items("image-labels", [encoded(11, 10, "PNG", "L")])
    with pytest.raises(LimitExceededError, match=r"image 1 is 20x30"):
        LIMITS.check_items(
            "image-labels", [encoded(2, 2, "PNG", "L"), np.zeros((30, 20, 3), np.uint8)]
        )


def test_a_decompression_bomb_is_refused_from_its_header():
    bomb = png_header_only(60_000, 60_000)  # 3.6 G pixels, beyond what PIL even opens
    with pytest.raises(LimitExceededError, match="max_image_pixels"):
        LIMITS.check_items("image-labels", [bomb])
    with pytest.raises(LimitExceededError, match="10000x10000"):
        Limits(max_image_pixels=1000).check_items("image-labels", [png_header_only(10000, 10000)])
    assert image_size(png_header_only(300, 200)) == (300, 200)


@pytest.mark.parametrize(
    ("fmt", "mode", "options"),
    [
        ("PNG", "RGB", {}),
        ("PNG", "RGBA", {}),
        ("PNG", "P", {}),
        ("JPEG", "RGB", {}),
        ("JPEG", "L", {}),
        ("JPEG", "CMYK", {}),
        ("JPEG", "RGB", {"progressive": True}),
        ("JPEG", "RGB", {"exif": b"Exif\0\0" + b"\0" * 2000, "icc_profile": b"\0" * 5000}),
        ("WEBP", "RGB", {}),
        ("GIF", "P", {}),
        ("BMP", "RGB", {}),
    ],
)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (28, 8), (640, 480), (3000, 17)])
def test_image_headers_give_the_size_pil_reads(fmt, mode, options, width, height):
    data = encoded(width, height, fmt, mode, **options)
    assert image_size(data) == (width, height)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (width, height)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_cut_header_never_gives_a_wrong_size(fmt):
    data = encoded(300, 200, fmt, exif=b"Exif\0\0" + b"\0" * 100)
    for end in range(len(data) // 4):
        assert image_size(data[:end]) in ((300, 200), None)


def test_undecodable_items_are_left_to_their_decoder():
    assert image_size(b"not an image") is None
    with pytest.raises(TaskInputError):
        audio_seconds(b"RIFFjunk")
    LIMITS.check_items("image-labels", [b"not an image"])
    LIMITS.check_items("audio-text", [b"RIFFjunk"])
    LIMITS.check_items("unknown-task", [object()])


def test_request_ids_are_short_and_printable():
    Limits.check_request_id("")
    Limits.check_request_id("req-42")
    with pytest.raises(LimitExceededError, match="257 characters"):
        Limits.check_request_id("x" * 257)
    with pytest.raises(LimitExceededError, match="printable"):
        Limits.check_request_id("a\nb")


def test_limit_errors_are_bad_input():
    assert issubclass(LimitExceededError, InvalidRequestError)


def test_limits_come_from_the_settings():
    settings = GatewaySettings(max_items_per_request=8, max_json_depth=10, max_audio_s=5)
    limits = Limits.from_settings(settings)
    assert (limits.max_items_per_request, limits.max_json_depth, limits.max_audio_s) == (8, 10, 5)
    assert Limits.from_settings(GatewaySettings()) == Limits()
    with pytest.raises(ValidationError, match="max_json_depth"):
        GatewaySettings(max_json_depth=2)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"tls_cert_file": "c.pem"}, "set both or neither"),
        ({"tls_key_file": "k.pem"}, "set both or neither"),
        ({"tls_client_ca_file": "ca.pem"}, "needs tls_cert_file"),
        ({"triton_tls_cert_file": "c.pem"}, "set both or neither"),
        ({"triton_tls_ca_file": "ca.pem"}, "triton_tls is false"),
    ],
)
def test_tls_settings_are_checked_together(settings, message):
    with pytest.raises(ValidationError, match=message):
        GatewaySettings(**settings)
