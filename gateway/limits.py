"""Request limits, each checked before the work it bounds and named in its error.

Both transports and the data plane call these checks; the values are settings
(``GatewaySettings.max_*``) with documented defaults:

- ``max_json_depth``: nesting of an HTTP JSON body, measured on the raw bytes before
  ``json.loads`` (deep nesting would otherwise exhaust the parser's recursion);
- ``max_tensor_elements``: elements of an input tensor, from its declared shape, before its
  data is decoded; a BYTES tensor may also hold no more than ``max_items_per_request``
  elements, because each element becomes one Python object (one image, clip or text);
- ``max_items_per_request``, ``max_text_chars``, ``max_audio_s``, ``max_image_pixels``: the
  task items of a request, checked from counts, lengths and file headers before any image
  or audio is decoded or any text tokenised.

The body size itself (``max_payload_bytes``) is enforced by the transports while reading.
A breach raises :class:`LimitExceededError` (INVALID_ARGUMENT / 400).
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gateway.config import GatewaySettings
from gateway.errors import LimitExceededError
from gateway.tasks.audio import audio_seconds
from gateway.tasks.base import TaskInputError

MAX_REQUEST_ID_CHARS = 256
"""Longest request id accepted; it is echoed and logged, so it stays short and printable."""

_JSON_STRING = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = np.frombuffer(b"[{", dtype=np.uint8)


def json_depth(raw: bytes | memoryview) -> int:
    """Deepest nesting of arrays and objects in a JSON text, without parsing it.

    Escaped characters and strings are dropped first (so brackets inside strings do not
    count), then the remaining brackets are summed as +1 / -1 in one vectorised pass.
    Malformed JSON gets a best-effort figure; the parser rejects it afterwards.
    """
    text = bytes(raw).replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where(np.isin(codes, _OPENING), 1, -1)
    return int(np.cumsum(steps).max())


@dataclass(frozen=True)
class Limits:
    """The request limits of one gateway (defaults as in ``GatewaySettings``)."""

    max_items_per_request: int = 64
    max_text_chars: int = 4096
    max_audio_s: float = 60.0
    max_image_pixels: int = 16_777_216
    max_json_depth: int = 32
    max_tensor_elements: int = 16_777_216

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> Limits:
        """The limits a gateway's settings describe."""
        return cls(
            max_items_per_request=settings.max_items_per_request,
            max_text_chars=settings.max_text_chars,
            max_audio_s=settings.max_audio_s,
            max_image_pixels=settings.max_image_pixels,
            max_json_depth=settings.max_json_depth,
            max_tensor_elements=settings.max_tensor_elements,
        )

    # -- wire level: before any tensor data is decoded ----------------------------------

    def check_json(self, raw: bytes | memoryview) -> None:
        """Reject a JSON body nested deeper than ``max_json_depth``."""
        depth = json_depth(raw)
        if depth > self.max_json_depth:
            raise LimitExceededError(
                f"the JSON body is nested {depth} levels deep; the limit is "
                f"{self.max_json_depth} (max_json_depth)"
            )

    def check_tensor(self, name: str, datatype: str, shape: Sequence[int]) -> None:
        """Reject a tensor whose declared shape holds too many elements."""
        count = 1
        for dim in shape:
            count *= int(dim)
        if count > self.max_tensor_elements:
            raise LimitExceededError(
                f"input '{name}' has {count} elements; the limit is "
                f"{self.max_tensor_elements} (max_tensor_elements)"
            )
        if datatype == "BYTES" and count > self.max_items_per_request:
            raise LimitExceededError(
                f"input '{name}' holds {count} BYTES elements; the limit is "
                f"{self.max_items_per_request} (max_items_per_request)"
            )

    @staticmethod
    def check_request_id(request_id: str) -> None:
        """Reject a request id that is too long or not printable (it is echoed and logged)."""
        if len(request_id) > MAX_REQUEST_ID_CHARS:
            raise LimitExceededError(
                f"the request id has {len(request_id)} characters; the limit is "
                f"{MAX_REQUEST_ID_CHARS}"
            )
        if not request_id.isprintable():
            raise LimitExceededError("the request id must be printable characters only")

    # -- task level: before images or audio are decoded, before texts are tokenised -----

    def check_items(self, task: str, items: Sequence[Any]) -> None:
        """Reject too many items, or an item over its task's size limit.

        Args:
            task: The manifest's task kind (``image-labels``, ``audio-text``, ``text-text``).
            items: The request's task items, not yet decoded.
        """
        if len(items) > self.max_items_per_request:
            raise LimitExceededError(
                f"the request holds {len(items)} items; the limit is "
                f"{self.max_items_per_request} (max_items_per_request)"
            )
        check = self._item_checks().get(task)
        if check is not None:
            for index, item in enumerate(items):
                check(index, item)

    def _item_checks(self) -> dict[str, Callable[[int, Any], None]]:
        return {
            "image-labels": self._check_image,
            "audio-text": self._check_audio,
            "text-text": self._check_text,
        }

    def _check_text(self, index: int, item: Any) -> None:
        if isinstance(item, str | bytes) and len(item) > self.max_text_chars:
            raise LimitExceededError(
                f"text {index} has {len(item)} characters; the limit is "
                f"{self.max_text_chars} (max_text_chars)"
            )

    def _check_audio(self, index: int, item: Any) -> None:
        if not isinstance(item, bytes) and not (isinstance(item, np.ndarray) and item.ndim >= 1):
            return
        try:
            seconds = audio_seconds(item)  # a file's header (any format), or the sample count
        except TaskInputError:
            return  # not an audio file the header reader understands: the decoder says why
        if seconds > self.max_audio_s:
            raise LimitExceededError(
                f"audio {index} is {seconds:.1f} s long; the limit is {self.max_audio_s:g} s "
                "(max_audio_s)"
            )

    def _check_image(self, index: int, item: Any) -> None:
        if isinstance(item, bytes):
            try:
                size = image_size(item)
            except Image.DecompressionBombError as exc:  # too large for PIL even to open
                raise LimitExceededError(
                    f"image {index}: {exc}; the limit is {self.max_image_pixels} pixels "
                    "(max_image_pixels)"
                ) from None
            if size is None:
                return  # not an image this check can read: the decoder says why
            width, height = size
        elif isinstance(item, np.ndarray) and item.ndim == 3:
            height, width = int(item.shape[0]), int(item.shape[1])
        else:
            return
        if width * height > self.max_image_pixels:
            raise LimitExceededError(
                f"image {index} is {width}x{height} = {width * height} pixels; the limit is "
                f"{self.max_image_pixels} (max_image_pixels)"
            )


DEFAULT_LIMITS = Limits()
"""The documented defaults, for callers that were given no settings."""


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
"""JPEG start-of-frame markers (0xC4, 0xC8 and 0xCC are tables and a reserved code)."""
_JPEG_STANDALONE = frozenset((0x01, *range(0xD0, 0xD8)))
"""JPEG markers without a length field (TEM, RST0-7)."""


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an encoded image's header, without decoding pixels, or None.

    PNG and JPEG, the formats clients send, are read straight from their bytes (a few
    microseconds: this runs on the event loop for every image); other formats, and any
    header those readers cannot follow, go through PIL's format detection.

    Raises:
        PIL.Image.DecompressionBombError: The header claims more pixels than PIL opens at all.
    """
    size = _png_size(data) if data.startswith(_PNG_SIGNATURE) else None
    if size is None and data.startswith(b"\xff\xd8"):
        size = _jpeg_size(data)
    return size if size is not None else _pil_size(data)


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk comes first, at a fixed place: its length (13), its type, then the size.
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return (width, height) if width and height else None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Segments follow the start-of-image marker, each with its length, until a frame header.
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte before a marker
            at += 1
            continue
        if marker in _JPEG_STANDALONE:
            at += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or scan data without a frame before it
            return None
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if marker in _JPEG_SOF:
            if length < 7 or at + 9 > end:
                return None
            height = int.from_bytes(data[at + 5 : at + 7], "big")
            width = int.from_bytes(data[at + 7 : at + 9], "big")
            return (width, height) if width and height else None
        if length < 2:
            return None
        at += 2 + length
    return None


def _pil_size(data: bytes) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
    except Image.DecompressionBombError:
        raise
    except Exception:  # not an image PIL can identify: the decoder reports it
        return None
    return int(width), int(height)
