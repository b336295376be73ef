"""Whisper checkpoints: the CTranslate2 reader, the name mappings and the cached decoder."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from builders.zoo.speech.ct2 import Ct2FormatError, read_model_bin
from builders.zoo.speech.model import Whisper
from builders.zoo.speech.sources import (
    WhisperSourceError,
    ct2_state_dict,
    load_ct2,
    load_hf,
    packaged_model_dir,
)

WIDTH = 384


@pytest.fixture(scope="module")
def packaged():
    return read_model_bin(packaged_model_dir() / "model.bin")


def test_packaged_model_bin_is_read_whole(packaged):
    assert packaged.spec == "WhisperSpec"
    assert len(packaged.variables) == 148
    assert packaged.aliases == {"decoder/projection/weight": "decoder/embeddings/weight"}
    floats = [v for v in packaged.variables.values() if v.dtype == np.float16]
    assert len(floats) == 139
    assert packaged.get("decoder/embeddings/weight").shape == (51864, WIDTH)
    assert packaged.setting("decoder/num_heads") == 6


def test_every_stored_weight_maps_to_exactly_one_of_ours_bit_for_bit(packaged):
    dims, state = ct2_state_dict(packaged)
    assert (dims.n_audio_layer, dims.n_text_layer, dims.n_text_state) == (4, 4, WIDTH)
    v = packaged.variables
    # Stacked projections split as Whisper's q, k, v; key biases are the stored zeros.
    for side, n in (("encoder", 4), ("decoder", 4)):
        for i in range(n):
            qkv = v[f"{side}/layer_{i}/self_attention/linear_0/weight"]
            ours = [state[f"{side}.blocks.{i}.attn.{p}.weight"] for p in ("query", "key", "value")]
            assert np.array_equal(np.concatenate(ours), qkv)
            bias = v[f"{side}/layer_{i}/self_attention/linear_0/bias"]
            assert not bias[WIDTH : 2 * WIDTH].any()
            assert np.array_equal(state[f"{side}.blocks.{i}.attn.value.bias"], bias[2 * WIDTH :])
    for i in range(4):
        kv = v[f"decoder/layer_{i}/attention/linear_1/weight"]
        ours = [state[f"decoder.blocks.{i}.cross_attn.{p}.weight"] for p in ("key", "value")]
        assert np.array_equal(np.concatenate(ours), kv)
    assert np.array_equal(state["decoder.token_embedding.weight"], v["decoder/embeddings/weight"])
    # Nothing lost, nothing invented: every stored float but the 12 zero key biases.
    stored = sum(a.size for a in v.values() if a.dtype == np.float16)
    assert sum(a.size for a in state.values()) == stored - 12 * WIDTH
    assert all(a.dtype == np.float16 for a in state.values())  # read exactly as stored


def test_fp16_weights_become_exact_fp32_parameters():
    module = load_ct2(packaged_model_dir())
    stored = read_model_bin(packaged_model_dir() / "model.bin").get("encoder/conv2/weight")
    assert np.array_equal(module.encoder.conv2.weight.detach().numpy(), stored.astype(np.float32))


def test_reader_refuses_other_files(tmp_path):
    bad = tmp_path / "model.bin"
    bad.write_bytes(b"\x07\x00\x00\x00rest")
    with pytest.raises(Ct2FormatError, match="binary version 7"):
        read_model_bin(bad)
    bad.write_bytes((6).to_bytes(4, "little") + b"\x05\x00Whi")
    with pytest.raises(Ct2FormatError, match="truncated"):
        read_model_bin(bad)


def test_hf_directory_loads_and_matches_transformers(tiny_hf_dir):
    transformers = pytest.importorskip("transformers")
    reference = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_hf_dir).eval()
    ours = load_hf(tiny_hf_dir)
    assert ours.dims.text_mlp == 24 and ours.dims.n_text_layer == 2
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[50257, 50362, 440, 2068, 13]])
    with torch.no_grad():
        want = reference(input_features=mel, decoder_input_ids=tokens).logits
        got = ours.logits(mel, tokens)
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


def test_ctranslate2_conversion_of_the_same_model_loads_identically(tiny_hf_dir, tmp_path):
    converters = pytest.importorskip("ctranslate2.converters")
    converters.TransformersConverter(str(tiny_hf_dir)).convert(str(tmp_path / "ct2"), force=True)
    from_hf, from_ct2 = load_hf(tiny_hf_dir).state_dict(), load_ct2(tmp_path / "ct2").state_dict()
    assert from_hf.keys() == from_ct2.keys()
    for name, tensor in from_hf.items():
        assert torch.equal(tensor, from_ct2[name]), name


def test_hf_directory_errors_name_the_problem(tiny_hf_dir, tmp_path):
    with pytest.raises(WhisperSourceError, match="config.json is missing"):
        load_hf(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_hf_dir, broken)
    (broken / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WhisperSourceError, match="not 'whisper'"):
        load_hf(broken)


def _greedy(model: Whisper, mel: torch.Tensor, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy tokens with the KV cache, and the logits of every step."""
    cross_k, cross_v = model.encode_cross(mel)
    keys = values = model.empty_cache(1)
    tokens, new, rows = [50257, 50362], torch.tensor([[50257, 50362]]), []
    for _ in range(steps):
        logits, keys, values = model.decode_step(new, keys, values, cross_k, cross_v)
        rows.append(logits[0, -1])
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        new = torch.tensor([[token]])
    return tokens, torch.stack(rows)


def test_kv_cache_decoding_equals_decoding_without_cache(tiny_hf_dir):
    model = load_hf(tiny_hf_dir)
    mel = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        tokens, cached = _greedy(model, mel, steps=12)
        full = model.logits(mel, torch.tensor([tokens[:-1]]))[0, 1:]
    assert torch.allclose(cached, full, atol=1e-4, rtol=1e-4)
    assert full.argmax(-1).tolist() == tokens[2:]
