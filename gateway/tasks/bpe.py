"""Token ids → text for byte-level BPE vocabularies (GPT-2's, which Whisper uses).

Each token is a string of printable stand-ins for bytes (GPT-2's ``bytes_to_unicode`` map:
printable Latin-1 bytes stand for themselves, the others are shifted above U+0100), so
decoding is: join the tokens, map each character back to its byte, decode UTF-8. Only
decoding is needed at serving time: prompts are made of special tokens.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from pathlib import Path


@functools.lru_cache(maxsize=1)
def _unicode_to_byte() -> dict[str, int]:
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + shifted)] = b
            shifted += 1
    return mapping


class ByteLevelDecoder:
    """Decodes token ids of one vocabulary (a list of token strings in id order)."""

    def __init__(self, tokens: Sequence[str]) -> None:
        """Keep the vocabulary; ``tokens[i]`` is the string of token id ``i``."""
        self.tokens = list(tokens)
        self._to_byte = _unicode_to_byte()

    @classmethod
    def from_file(cls, path: Path) -> ByteLevelDecoder:
        """Read a vocabulary file: one token per line, in id order."""
        return cls(path.read_text(encoding="utf-8").split("\n")[:-1])

    def __len__(self) -> int:
        return len(self.tokens)

    def id_of(self, token: str) -> int:
        """The id of a (special) token; ValueError when the vocabulary lacks it."""
        return self.tokens.index(token)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; invalid UTF-8 (a character cut between tokens) becomes U+FFFD."""
        data = bytes(self._to_byte.get(c, 0x3F) for i in ids for c in self.tokens[i])
        return data.decode("utf-8", errors="replace")
