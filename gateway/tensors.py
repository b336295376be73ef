"""KServe v2 tensor encodings: datatypes, raw little-endian buffers, BYTES framing, JSON.

Shared by both transports, so a tensor decodes the same way whichever way it arrived. Every
failure is an :class:`InvalidRequestError` naming the tensor and what was wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.errors import InvalidRequestError
from gateway.tasks.base import Tensor
from gateway.types import bytes_array

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
"""KServe v2 numeric datatypes and their little-endian numpy dtypes (``BYTES`` is separate)."""

DATATYPES = frozenset([*NUMPY_DTYPES, "BYTES"])
MAX_RANK = 8
_LENGTH = struct.Struct("<I")


def check_shape(name: str, datatype: str, shape: Sequence[int]) -> tuple[int, ...]:
    """Validate a datatype and shape from the wire; returns the shape as a tuple.

    Raises:
        InvalidRequestError: Unknown datatype, negative dims or too many dims.
    """
    if datatype not in DATATYPES:
        raise InvalidRequestError(
            f"input '{name}': unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}"
        )
    dims = tuple(int(d) for d in shape)
    if len(dims) > MAX_RANK or any(d < 0 for d in dims):
        raise InvalidRequestError(f"input '{name}': invalid shape {list(dims)}")
    return dims


def element_count(shape: Sequence[int]) -> int:
    """Number of elements of a shape (1 for a scalar)."""
    count = 1
    for d in shape:
        count *= int(d)
    return count


def datatype_of(array: Tensor) -> str:
    """The KServe datatype of a numpy array (object arrays are ``BYTES``)."""
    if array.dtype == object or array.dtype.kind in "SU":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if array.dtype == dtype or array.dtype == dtype.newbyteorder("="):
            return name
    raise ValueError(f"no KServe datatype for numpy dtype {array.dtype}")


def serialize_bytes(array: Tensor) -> bytes:
    """Frame a BYTES tensor: each element as a 4-byte little-endian length, then the bytes."""
    parts: list[bytes] = []
    for item in array.reshape(-1):
        raw = item.encode("utf-8") if isinstance(item, str) else bytes(item)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def deserialize_bytes(name: str, raw: bytes | memoryview, count: int) -> Tensor:
    """Split a framed BYTES buffer into ``count`` elements.

    Raises:
        InvalidRequestError: The framing is truncated or holds a different element count.
    """
    view = memoryview(raw)
    items: list[bytes] = []
    offset = 0
    while offset < len(view):
        if offset + 4 > len(view):
            raise InvalidRequestError(f"input '{name}': truncated BYTES length prefix")
        (length,) = _LENGTH.unpack_from(view, offset)
        offset += 4
        if offset + length > len(view):
            raise InvalidRequestError(f"input '{name}': BYTES element overruns the buffer")
        items.append(bytes(view[offset : offset + length]))
        offset += length
    if len(items) != count:
        raise InvalidRequestError(
            f"input '{name}': {len(items)} BYTES elements for a shape of {count} elements"
        )
    return bytes_array(items)


def from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes | memoryview) -> Tensor:
    """Decode a raw (binary) tensor buffer into a shaped array.

    Raises:
        InvalidRequestError: The buffer size does not match the datatype and shape.
    """
    dims = check_shape(name, datatype, shape)
    count = element_count(dims)
    if datatype == "BYTES":
        return deserialize_bytes(name, raw, count).reshape(dims)
    dtype = NUMPY_DTYPES[datatype]
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidRequestError(
            f"input '{name}': {len(raw)} bytes of data for {datatype} shape {list(dims)}, "
            f"expected {expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(dims)


def to_raw(array: Tensor, datatype: str | None = None) -> bytes:
    """Encode an array as a raw little-endian buffer (BYTES framed).

    ``datatype`` is the array's KServe datatype when the caller knows it already.
    """
    if (datatype or datatype_of(array)) == "BYTES":
        return serialize_bytes(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list | tuple):
        out: list[Any] = []
        for item in data:
            out.extend(_flatten(item))
        return out
    return [data]


def from_json(name: str, datatype: str, shape: Sequence[int], data: Any) -> Tensor:
    """Decode the JSON ``data`` of a tensor (flat or nested, row-major) into an array.

    Raises:
        InvalidRequestError: Wrong element count or element types for the datatype.
    """
    dims = check_shape(name, datatype, shape)
    flat = _flatten(data)
    count = element_count(dims)
    if len(flat) != count:
        raise InvalidRequestError(
            f"input '{name}': {len(flat)} data elements for shape {list(dims)} ({count} expected)"
        )
    if datatype == "BYTES":
        if not all(isinstance(x, str) for x in flat):
            raise InvalidRequestError(f"input '{name}': BYTES data in JSON must be strings")
        return bytes_array([x.encode("utf-8") for x in flat]).reshape(dims)
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        if not all(isinstance(x, bool) for x in flat):
            raise InvalidRequestError(f"input '{name}': BOOL data must be true/false")
    elif any(isinstance(x, bool) or not isinstance(x, int | float) for x in flat):
        raise InvalidRequestError(f"input '{name}': {datatype} data must be numbers")
    elif dtype.kind in "iu":
        if not all(isinstance(x, int) for x in flat):
            raise InvalidRequestError(f"input '{name}': {datatype} data must be integers")
        info = np.iinfo(dtype)
        if flat and (min(flat) < info.min or max(flat) > info.max):
            raise InvalidRequestError(f"input '{name}': value out of range for {datatype}")
    try:
        return np.asarray(flat, dtype=dtype).reshape(dims)
    except OverflowError as exc:
        raise InvalidRequestError(f"input '{name}': value out of range for {datatype}") from exc


def to_json(array: Tensor) -> list[Any]:
    """A flat, row-major JSON list of an array; BYTES elements become UTF-8 strings."""
    flat = array.reshape(-1)
    if datatype_of(array) == "BYTES":
        return [
            x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x) for x in flat
        ]
    values: list[Any] = flat.tolist()
    return values
