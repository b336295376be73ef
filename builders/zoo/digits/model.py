"""A small CNN for 8×8 digits whose widths come from a frozen config.

``images`` [B, 1, 8, 8] in scikit-learn's 0..16 scale → three 3×3 conv + BN + ReLU layers
(8×8, then 4×4 and 2×2 after max-pooling) → a hidden fully connected layer → ``logits``
[B, 10]. A structurally pruned copy is the same class with smaller widths.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

INPUT_PX = 8
INPUT_MAX = 16.0
"""Largest input value (ink) in scikit-learn's digits; the model rescales it to 1."""
FINAL_PX = 2
"""Side of the last feature map, after two 2× max-pools."""


@dataclass(frozen=True)
class DigitsConfig:
    """Layer widths of :class:`DigitsCNN`."""

    conv_channels: tuple[int, int, int] = (32, 64, 128)
    hidden: int = 128
    num_classes: int = 10
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if len(self.conv_channels) != 3 or min(self.conv_channels) < 1:
            raise ValueError(f"need three positive conv widths, got {self.conv_channels}")
        if self.hidden < 1 or self.num_classes < 2 or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"invalid digits config: {self}")

    def save(self, path: Path) -> None:
        """Write the config as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> DigitsConfig:
        """Read a config written by :meth:`save`."""
        raw = json.loads(path.read_text())
        return cls(**{**raw, "conv_channels": tuple(raw["conv_channels"])})


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class DigitsCNN(nn.Module):
    """``images`` [B, 1, 8, 8] (0..16) → ``logits`` [B, num_classes]."""

    def __init__(self, cfg: DigitsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c1, c2, c3 = cfg.conv_channels
        self.conv1 = _conv_bn(1, c1)
        self.conv2 = _conv_bn(c1, c2)
        self.conv3 = _conv_bn(c2, c3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(c3 * FINAL_PX * FINAL_PX, cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(cfg.hidden, cfg.num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Classify digits given in scikit-learn's 0..16 scale."""
        x = self.conv1(images * (1.0 / INPUT_MAX))
        x = self.pool(self.conv2(x))
        x = self.pool(self.conv3(x))
        x = self.dropout(torch.relu(self.fc1(torch.flatten(x, 1))))
        out: torch.Tensor = self.fc2(x)
        return out


def count_parameters(module: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
