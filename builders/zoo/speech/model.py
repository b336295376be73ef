"""Whisper in torch: encoder, decoder with a KV cache, and a no-cache reference forward.

Parameter names follow openai-whisper's state dict (``encoder.blocks.0.attn.query.weight``,
``decoder.token_embedding.weight``, ...), so its checkpoints load as they are; the other
sources map their names onto these (:mod:`builders.zoo.speech.sources`). The output
projection is the token embedding (tied), as in Whisper.

The cached interface is what the ONNX graphs export (:mod:`builders.zoo.speech.export`):
:meth:`Whisper.encode_cross` turns a mel window into every decoder layer's cross-attention
keys and values, and :meth:`Whisper.decode_step` takes new tokens, the self-attention cache
and those keys/values and returns logits and the grown cache. Caches are batch-first
[B, layers, heads, positions, head_dim].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


@dataclass(frozen=True)
class WhisperDims:
    """Sizes of a Whisper model (openai-whisper's ``ModelDimensions``)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4
    n_audio_mlp: int = 0
    """Hidden units of the encoder MLPs (0: 4 x width); smaller once pruned."""
    n_text_mlp: int = 0
    """Hidden units of the decoder MLPs (0: 4 x width); smaller once pruned."""

    def __post_init__(self) -> None:
        if self.n_audio_state % self.n_audio_head or self.n_text_state % self.n_text_head:
            raise ValueError("widths must be multiples of the head counts")
        if self.n_audio_state != self.n_text_state:
            raise ValueError("encoder and decoder widths must match (cross-attention)")

    @property
    def audio_mlp(self) -> int:
        """Encoder MLP width."""
        return self.n_audio_mlp or 4 * self.n_audio_state

    @property
    def text_mlp(self) -> int:
        """Decoder MLP width."""
        return self.n_text_mlp or 4 * self.n_text_state

    def save(self, path: Path) -> None:
        """Write as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> WhisperDims:
        """Read from JSON."""
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's fixed sinusoidal positions of the encoder: [length, channels]."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    return torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1)


class MultiHeadAttention(nn.Module):
    """Whisper attention: q, v and out projections with bias, k without."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def heads(self, x: Tensor) -> Tensor:
        """[B, T, D] → [B, H, T, D/H]."""
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, causal_from: int | None) -> Tensor:
        """Scaled dot-product attention of [B,H,T,dh] q over [B,H,S,dh] k, v.

        With ``causal_from`` = P, query i (absolute position P + i) sees keys 0..P + i.
        """
        scale = q.shape[-1] ** -0.5
        scores = (q * scale) @ k.transpose(-1, -2)
        if causal_from is not None:
            t, s = q.shape[-2], k.shape[-2]
            rows = torch.arange(t, device=q.device)[:, None] + (s - t)
            cols = torch.arange(s, device=q.device)[None, :]
            scores = scores.masked_fill(cols > rows, float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        out = weights @ v
        b, h, t, dh = out.shape
        projected: Tensor = self.out(out.transpose(1, 2).reshape(b, t, h * dh))
        return projected


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, n_state: int, n_head: int, n_mlp: int, cross: bool) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross else None
        self.mlp = nn.Sequential(nn.Linear(n_state, n_mlp), nn.GELU(), nn.Linear(n_mlp, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def encoder_forward(self, x: Tensor) -> Tensor:
        """Encoder block (no mask, no cross-attention)."""
        h = self.attn_ln(x)
        a = self.attn
        x = x + a.attend(a.heads(a.query(h)), a.heads(a.key(h)), a.heads(a.value(h)), None)
        out: Tensor = x + self.mlp(self.mlp_ln(x))
        return out

    def cross_kv(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        """This decoder block's cross-attention keys and values of the audio features."""
        assert self.cross_attn is not None
        c = self.cross_attn
        return c.heads(c.key(audio)), c.heads(c.value(audio))

    def decoder_forward(
        self, x: Tensor, past_k: Tensor, past_v: Tensor, cross_k: Tensor, cross_v: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Decoder block over new positions ``x``; returns (x, keys, values) incl. the past."""
        assert self.cross_attn is not None and self.cross_attn_ln is not None
        a = self.attn
        h = self.attn_ln(x)
        k = torch.cat([past_k, a.heads(a.key(h))], dim=2)
        v = torch.cat([past_v, a.heads(a.value(h))], dim=2)
        x = x + a.attend(a.heads(a.query(h)), k, v, causal_from=past_k.shape[2])
        c = self.cross_attn
        x = x + c.attend(c.heads(c.query(self.cross_attn_ln(x))), cross_k, cross_v, None)
        return x + self.mlp(self.mlp_ln(x)), k, v


class AudioEncoder(nn.Module):
    """Two GELU convs (the second strided by 2), fixed sinusoidal positions, blocks, LN."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(dims.n_mels, dims.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(
            dims.n_audio_state, dims.n_audio_state, kernel_size=3, stride=2, padding=1
        )
        positions = sinusoids(dims.n_audio_ctx, dims.n_audio_state)
        self.register_buffer("positional_embedding", positions)
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.n_audio_state, dims.n_audio_head, dims.audio_mlp, False)
            for _ in range(dims.n_audio_layer)
        )
        self.ln_post = nn.LayerNorm(dims.n_audio_state)

    def forward(self, mel: Tensor) -> Tensor:
        """[B, n_mels, 2 * n_audio_ctx] → [B, n_audio_ctx, width]."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        positions: Tensor = self.positional_embedding  # type: ignore[assignment]
        x = x + positions[: x.shape[1]]
        for block in self.blocks:
            assert isinstance(block, ResidualAttentionBlock)
            x = block.encoder_forward(x)
        out: Tensor = self.ln_post(x)
        return out


class TextDecoder(nn.Module):
    """Token + learned positional embeddings, cross-attending blocks, LN, tied projection."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(dims.n_vocab, dims.n_text_state)
        self.positional_embedding = nn.Parameter(torch.zeros(dims.n_text_ctx, dims.n_text_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(dims.n_text_state, dims.n_text_head, dims.text_mlp, True)
            for _ in range(dims.n_text_layer)
        )
        self.ln = nn.LayerNorm(dims.n_text_state)
        # A zero bias makes the exported projection one Gemm(transB) over the table itself.
        self.register_buffer("logit_bias", torch.zeros(dims.n_vocab), persistent=False)

    def layers(self) -> list[ResidualAttentionBlock]:
        """The blocks, typed."""
        return [b for b in self.blocks if isinstance(b, ResidualAttentionBlock)]

    def project(self, x: Tensor) -> Tensor:
        """Logits [B, T, V] of final states [B, T, D] through the tied embedding.

        Flattened to 2-D and with a (zero) bias, so the export is one Gemm reading the
        embedding as stored (transB); a plain matmul would make the exporter fold a
        transposed second copy of the table into the graph.
        """
        b, t, d = x.shape
        weight = self.token_embedding.weight
        bias: Tensor = self.logit_bias  # type: ignore[assignment]
        return F.linear(self.ln(x).reshape(b * t, d), weight, bias).view(b, t, weight.shape[0])


class Whisper(nn.Module):
    """Whisper encoder–decoder with cached (export) and uncached (reference) decoding."""

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        self.encoder = AudioEncoder(dims)
        self.decoder = TextDecoder(dims)

    def encode_cross(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of every decoder layer, [B, L, H, S, dh] each."""
        audio = self.encoder(mel)
        pairs = [block.cross_kv(audio) for block in self.decoder.layers()]
        return torch.stack([k for k, _ in pairs], 1), torch.stack([v for _, v in pairs], 1)

    def decode_step(
        self,
        tokens: Tensor,
        self_keys: Tensor,
        self_values: Tensor,
        cross_keys: Tensor,
        cross_values: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Logits [B, T, V] of ``tokens`` [B, T] after a cache of P positions; grown caches."""
        past = self_keys.shape[3]
        d = self.decoder
        x = d.token_embedding(tokens) + d.positional_embedding[past : past + tokens.shape[1]]
        keys, values = [], []
        for i, block in enumerate(d.layers()):
            x, k, v = block.decoder_forward(
                x, self_keys[:, i], self_values[:, i], cross_keys[:, i], cross_values[:, i]
            )
            keys.append(k)
            values.append(v)
        return d.project(x), torch.stack(keys, 1), torch.stack(values, 1)

    def empty_cache(self, batch: int) -> Tensor:
        """A self-attention cache of zero positions."""
        d = self.dims
        return torch.zeros(batch, d.n_text_layer, d.n_text_head, 0, d.n_text_state // d.n_text_head)

    def logits(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Reference forward without a cache: logits [B, T, V] of the whole token prefix."""
        cross_k, cross_v = self.encode_cross(mel)
        empty = self.empty_cache(tokens.shape[0])
        logits, _, _ = self.decode_step(tokens, empty, empty, cross_k, cross_v)
        return logits
