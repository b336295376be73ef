"""Token-id tensors for teacher-forced training, batched by length."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import sentencepiece as spm
import torch

from builders.zoo.translation.corpus import Pair
from gateway.tasks.base import pad_stack


@dataclass(frozen=True)
class EncodedPair:
    """Source ids ending in </s>; the target as it enters (<s> first) and leaves (</s> last)."""

    src: list[int]
    tgt_in: list[int]
    tgt_out: list[int]


@dataclass(frozen=True)
class Batch:
    """Padded id tensors of one training batch."""

    src_ids: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor


def encode_pairs(
    processor: spm.SentencePieceProcessor, pairs: list[Pair], settings: dict[str, int]
) -> list[EncodedPair]:
    """Tokenize pairs, dropping any that would not fit the model's positions."""
    bos, eos = settings["bos_id"], settings["eos_id"]
    src_ids = processor.encode([p.en for p in pairs])
    tgt_ids = processor.encode([p.de for p in pairs])
    return [
        EncodedPair([*s, eos], [bos, *t], [*t, eos])
        for s, t in zip(src_ids, tgt_ids, strict=True)
        if len(s) <= settings["max_source_tokens"] and len(t) <= settings["max_target_tokens"]
    ]


def _batch(items: list[EncodedPair], pad_id: int) -> Batch:
    def stack(rows: list[list[int]]) -> torch.Tensor:
        return torch.from_numpy(pad_stack([np.array(r, np.int64) for r in rows], pad_id))

    return Batch(
        stack([e.src for e in items]),
        stack([e.tgt_in for e in items]),
        stack([e.tgt_out for e in items]),
    )


def epoch_batches(
    items: list[EncodedPair], max_tokens: int, pad_id: int, rng: np.random.Generator
) -> list[Batch]:
    """One epoch of batches of similar lengths, holding at most ``max_tokens`` padded tokens.

    Sorting by length with random tie-breaks keeps padding low; the batch order is shuffled.
    """
    lengths = np.array([max(len(e.src), len(e.tgt_in)) for e in items])
    order = np.lexsort((rng.random(len(items)), lengths))
    batches: list[list[EncodedPair]] = [[]]
    longest = 0
    for index in order:
        longest = max(longest, int(lengths[index]))
        if batches[-1] and longest * (len(batches[-1]) + 1) > max_tokens:
            batches.append([])
            longest = int(lengths[index])
        batches[-1].append(items[index])
    return [_batch(batches[i], pad_id) for i in rng.permutation(len(batches))]


def endless_batches(
    items: list[EncodedPair], max_tokens: int, pad_id: int, seed: int
) -> Iterator[Batch]:
    """Epoch after epoch of :func:`epoch_batches`, seeded."""
    rng = np.random.default_rng(seed)
    while True:
        yield from epoch_batches(items, max_tokens, pad_id, rng)
