"""The joint English/German sentencepiece model and the token limits served with it."""

from __future__ import annotations

import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import sentencepiece as spm

from builders.zoo.translation.corpus import PRINTF_SPECIFIER, Pair
from gateway.tasks.translation import SETTINGS_FILE, SPM_FILE

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPM_SEED = 1234
VOCAB_SIZE = 6000
MAX_POSITIONS = 128
"""Positions the model can embed; it bounds the source and the output length."""
SPECIFIER_MIN_COUNT = 20


def common_specifiers(pairs: list[Pair], min_count: int = SPECIFIER_MIN_COUNT) -> list[str]:
    """Format specifiers frequent enough in ``pairs`` to become single, atomic pieces.

    As one piece each, ``%s`` or ``%2$d`` are copied whole instead of being spelled out.
    """
    counts = Counter(
        m.group(0) for p in pairs for text in (p.en, p.de) for m in PRINTF_SPECIFIER.finditer(text)
    )
    return sorted(spec for spec, count in counts.items() if count >= min_count)


def train_spm(pairs: list[Pair], vocab_size: int = VOCAB_SIZE, seed: int = SPM_SEED) -> bytes:
    """Train a unigram sentencepiece model on both sides of ``pairs``; returns its bytes.

    The whole corpus is used (no sampling) and the generator is seeded, so the model is
    reproducible. Byte fallback keeps rare characters (place names) out of ``<unk>``.
    """
    spm.SetRandomGeneratorSeed(seed)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([text for p in pairs for text in (p.en, p.de)]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        input_sentence_size=0,
        num_threads=2,
        user_defined_symbols=common_specifiers(pairs),
        minloglevel=2,
    )
    return model.getvalue()


def length_settings(processor: spm.SentencePieceProcessor, pairs: list[Pair]) -> dict[str, Any]:
    """Token limits for serving, measured on the training pairs.

    The output cap for a source of ``n`` tokens is ``ceil(n * output_ratio) + output_margin``
    (never above ``max_target_tokens``); the ratio covers the longest German/English
    length ratio seen on sources of 8 tokens or more.
    """
    src = [len(ids) for ids in processor.encode([p.en for p in pairs])]
    tgt = [len(ids) for ids in processor.encode([p.de for p in pairs])]
    ratios = sorted(t / s for s, t in zip(src, tgt, strict=True) if s >= 8)
    return {
        "pad_id": PAD_ID,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "vocab_size": processor.get_piece_size(),
        "max_positions": MAX_POSITIONS,
        "max_source_tokens": MAX_POSITIONS - 1,  # room for </s>
        "max_target_tokens": MAX_POSITIONS - 1,  # room for <s>
        "output_ratio": math.ceil(ratios[-1] * 10) / 10,
        "output_margin": 10,
        "train_source_tokens_max": max(src),
        "train_target_tokens_max": max(tgt),
    }


def build(pairs: list[Pair], assets_dir: Path = ASSETS_DIR) -> dict[str, Any]:
    """Train the tokenizer on ``pairs`` and write ``spm.model`` and ``tokenizer.json``."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    (assets_dir / SPM_FILE).write_bytes(train_spm(pairs))
    settings = length_settings(load_spm(assets_dir), pairs)
    (assets_dir / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")
    return settings


def load_spm(assets_dir: Path = ASSETS_DIR) -> spm.SentencePieceProcessor:
    """Load the committed sentencepiece model."""
    return spm.SentencePieceProcessor(model_file=str(assets_dir / SPM_FILE))


def load_settings(assets_dir: Path = ASSETS_DIR) -> dict[str, Any]:
    """Load the special ids and token limits written next to the sentencepiece model."""
    settings: dict[str, Any] = json.loads((assets_dir / SETTINGS_FILE).read_text())
    return settings
