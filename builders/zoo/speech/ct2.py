"""A reader of CTranslate2 ``model.bin`` files (binary format version 6), in numpy.

Layout (little-endian), as CTranslate2's ``ModelSpec._serialize`` writes it::

    u32 version | str spec name | u32 revision | u32 n
    n x (str name | u8 rank | rank x u32 dim | u8 dtype | u32 bytes | bytes)
    u32 n_aliases | n_aliases x (str alias | str target)

where ``str`` is a u16 length (with the terminating NUL) followed by the UTF-8 bytes and a
NUL. dtype ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16. Tensors are read
exactly as stored (fp16 stays fp16); scalars (rank 0) are settings such as ``num_heads``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

SUPPORTED_VERSIONS = (5, 6)
_DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")


class Ct2FormatError(ValueError):
    """The file is not a CTranslate2 model this reader understands."""


@dataclass(frozen=True)
class Ct2Model:
    """The variables of a CTranslate2 model, aliases resolved."""

    spec: str
    """Spec class name, e.g. ``WhisperSpec``."""
    revision: int
    variables: dict[str, npt.NDArray[np.generic]]
    aliases: dict[str, str]
    """Alias name → the variable it shares (e.g. a tied output projection)."""

    def get(self, name: str) -> npt.NDArray[np.generic]:
        """A variable by name, following aliases; KeyError if absent."""
        return self.variables[self.aliases.get(name, name)]

    def setting(self, name: str) -> int:
        """A scalar setting (``decoder/num_heads``) as an int."""
        return int(self.get(name).reshape(-1)[0])


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def unpack(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from("<" + fmt, self.data, self.offset)
        except struct.error as exc:
            raise Ct2FormatError(f"truncated file at byte {self.offset}") from exc
        self.offset += struct.calcsize(fmt)
        return int(value)

    def string(self) -> str:
        length = self.unpack("H")
        raw = self.take(length)
        return raw[:-1].decode("utf-8")

    def take(self, length: int) -> bytes:
        if self.offset + length > len(self.data):
            raise Ct2FormatError(f"truncated file: {length} bytes wanted at {self.offset}")
        raw = self.data[self.offset : self.offset + length]
        self.offset += length
        return raw


def read_model_bin(path: Path) -> Ct2Model:
    """Read every variable of a ``model.bin``.

    Raises:
        Ct2FormatError: Unknown version or dtype, or a truncated file.
    """
    cursor = _Cursor(path.read_bytes())
    version = cursor.unpack("I")
    if version not in SUPPORTED_VERSIONS:
        raise Ct2FormatError(f"{path.name}: binary version {version}, want {SUPPORTED_VERSIONS}")
    spec = cursor.string()
    revision = cursor.unpack("I")
    variables: dict[str, npt.NDArray[np.generic]] = {}
    for _ in range(cursor.unpack("I")):
        name = cursor.string()
        shape = tuple(cursor.unpack("I") for _ in range(cursor.unpack("B")))
        dtype_id = cursor.unpack("B")
        if dtype_id >= len(_DTYPES) or _DTYPES[dtype_id] == "bfloat16":
            raise Ct2FormatError(f"{name}: unsupported dtype id {dtype_id}")
        raw = cursor.take(cursor.unpack("I"))
        array = np.frombuffer(raw, dtype=np.dtype(_DTYPES[dtype_id]).newbyteorder("<"))
        variables[name] = array.reshape(shape).copy()
    aliases = {}
    if cursor.offset < len(cursor.data):
        for _ in range(cursor.unpack("I")):
            alias = cursor.string()
            aliases[alias] = cursor.string()
    return Ct2Model(spec, revision, variables, aliases)
