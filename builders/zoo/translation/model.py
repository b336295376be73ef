"""A small pre-LN encoder–decoder Transformer built on ``F.scaled_dot_product_attention``."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn


@dataclass(frozen=True)
class TranslatorConfig:
    """Sizes of a :class:`Translator`; a pruned copy has the same fields with smaller widths."""

    vocab_size: int
    d_model: int = 128
    heads: int = 4
    """Heads in every attention block (encoder self, decoder self, decoder cross)."""
    head_dim: int = 32
    ffn: int = 512
    """Hidden units of every feed-forward block."""
    encoder_layers: int = 4
    decoder_layers: int = 3
    max_positions: int = 128
    pad_id: int = 0
    dropout: float = 0.1
    """Applied to embeddings and residual branches only; dropout is costly on a CPU."""

    def __post_init__(self) -> None:
        """Reject sizes no model can have."""
        for name in ("vocab_size", "d_model", "heads", "head_dim", "ffn", "max_positions"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ValueError("the encoder and the decoder need at least one layer each")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"pad_id {self.pad_id} is outside the vocabulary")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def save(self, path: Path) -> None:
        """Write the config as JSON."""
        path.write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> TranslatorConfig:
        """Read a config written by :meth:`save`."""
        return cls(**json.loads(path.read_text()))


class Attention(nn.Module):
    """Multi-head attention whose head count can shrink: heads are slices of the projections."""

    def __init__(self, d_model: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(d_model, heads * head_dim)
        self.k = nn.Linear(d_model, heads * head_dim)
        self.v = nn.Linear(d_model, heads * head_dim)
        self.out = nn.Linear(heads * head_dim, d_model)

    def _split(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """Attend from ``x`` [B,T,D] to ``memory`` [B,S,D]; ``mask`` is True where allowed."""
        q, k, v = self._split(self.q(x)), self._split(self.k(memory)), self._split(self.v(memory))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        out: Tensor = self.out(y.transpose(1, 2).flatten(2))
        return out


class FeedForward(nn.Module):
    """Two linear layers with a GELU; its hidden units are what pruning removes."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the block to ``x`` [..., D]."""
        out: Tensor = self.down(F.gelu(self.up(x)))
        return out


class EncoderLayer(nn.Module):
    """Pre-LN self-attention and feed-forward, each with a residual."""

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.attn = Attention(cfg.d_model, cfg.heads, cfg.head_dim)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encode ``x`` [B,S,D]; ``mask`` [B,1,1,S] marks real source tokens."""
        h = self.norm1(x)
        x = x + self.drop(self.attn(h, h, mask))
        out: Tensor = x + self.drop(self.ffn(self.norm2(x)))
        return out


class DecoderLayer(nn.Module):
    """Pre-LN causal self-attention, cross-attention and feed-forward."""

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.self_attn = Attention(cfg.d_model, cfg.heads, cfg.head_dim)
        self.cross_attn = Attention(cfg.d_model, cfg.heads, cfg.head_dim)
        self.ffn = FeedForward(cfg.d_model, cfg.ffn)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, y: Tensor, memory: Tensor, self_mask: Tensor, cross_mask: Tensor) -> Tensor:
        """Decode ``y`` [B,T,D] against the encoder output ``memory`` [B,S,D]."""
        h = self.norm1(y)
        y = y + self.drop(self.self_attn(h, h, self_mask))
        y = y + self.drop(self.cross_attn(self.norm2(y), memory, cross_mask))
        out: Tensor = y + self.drop(self.ffn(self.norm3(y)))
        return out


class Translator(nn.Module):
    """Encoder–decoder with one embedding shared by source, target and the output layer.

    ``forward`` is the served graph: the next-token logits after each row's last non-pad
    target token. :meth:`all_logits` gives every position, for teacher-forced training.
    """

    def __init__(self, cfg: TranslatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.apply(_init_weights)

    def _embed(self, ids: Tensor) -> Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x: Tensor = self.drop(self.embed(ids) * math.sqrt(self.cfg.d_model) + self.positions(pos))
        return x

    def encode(self, src_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Encode ``src_ids`` [B,S]; returns the memory [B,S,D] and its key mask [B,1,1,S]."""
        mask = (src_ids != self.cfg.pad_id)[:, None, None, :]
        x = self._embed(src_ids)
        for layer in self.encoder:
            x = layer(x, mask)
        memory: Tensor = self.encoder_norm(x)
        return memory, mask

    def decode(self, tgt_ids: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Hidden states [B,T,D] for ``tgt_ids`` [B,T] (causal, pad keys masked)."""
        t = tgt_ids.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_ids.device).tril()
        self_mask = causal[None, None] & (tgt_ids != self.cfg.pad_id)[:, None, None, :]
        y = self._embed(tgt_ids)
        for layer in self.decoder:
            y = layer(y, memory, self_mask, src_mask)
        hidden: Tensor = self.decoder_norm(y)
        return hidden

    def project(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for hidden states, through the tied embedding."""
        return F.linear(hidden, self.embed.weight, self.bias)

    def all_logits(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Logits [B,T,V] at every target position (teacher forcing)."""
        memory, src_mask = self.encode(src_ids)
        return self.project(self.decode(tgt_ids, memory, src_mask))

    def forward(self, src_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Next-token logits [B,V] after the last non-pad token of each ``tgt_ids`` row."""
        memory, src_mask = self.encode(src_ids)
        hidden = self.decode(tgt_ids, memory, src_mask)
        last = (tgt_ids != self.cfg.pad_id).sum(dim=1, keepdim=True) - 1
        index = last.clamp(min=0)[:, :, None].expand(-1, 1, hidden.shape[-1])
        return self.project(hidden.gather(1, index).squeeze(1))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=module.embedding_dim**-0.5)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


def parameter_count(module: nn.Module) -> int:
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())
