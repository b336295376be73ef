"""A tiny randomly initialised Whisper, written by transformers itself (Hugging Face layout)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from builders.zoo.speech.sources import packaged_model_dir


def write_tiny_whisper(directory: Path) -> None:
    """A 2 + 2 layer, 16-wide Whisper with Whisper's vocabulary, in Hugging Face format."""
    transformers = pytest.importorskip("transformers")
    config = transformers.WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        encoder_layers=2,
        encoder_attention_heads=2,
        decoder_layers=2,
        decoder_attention_heads=2,
        d_model=16,
        encoder_ffn_dim=32,
        decoder_ffn_dim=24,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
    )
    torch.manual_seed(0)
    model = transformers.WhisperForConditionalGeneration(config).eval()
    with torch.no_grad():  # random biases everywhere but the keys, so the mapping shows
        for name, p in model.named_parameters():
            if name.endswith("bias") and "k_proj" not in name:
                p.normal_()
    model.save_pretrained(directory)
    shutil.copyfile(packaged_model_dir() / "tokenizer.json", directory / "tokenizer.json")
