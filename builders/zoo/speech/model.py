"""Conv1d + BiGRU character CTC model over log-mel features."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


@dataclass(frozen=True)
class SpeechConfig:
    """Sizes of a :class:`SpeechCTC`; a pruned model is the same class with smaller widths."""

    n_mels: int = 80
    conv_channels: int = 192
    """Output channels of the strided front-end convolution."""
    conv_kernel: int = 5
    conv_stride: int = 2
    hidden_sizes: tuple[int, ...] = (128, 128)
    """Hidden units per direction of each bidirectional GRU layer."""
    vocab_size: int = 28

    def __post_init__(self) -> None:
        sizes = (self.n_mels, self.conv_channels, self.conv_kernel, self.conv_stride)
        if min(sizes) < 1 or not self.hidden_sizes or min(self.hidden_sizes) < 1:
            raise ValueError(f"all sizes must be positive: {self}")
        if self.conv_kernel % 2 == 0:
            raise ValueError("conv_kernel must be odd so the padding is symmetric")
        if self.vocab_size < 2:
            raise ValueError("vocab_size must include the blank and at least one symbol")

    @property
    def conv_padding(self) -> int:
        """Symmetric time padding of the front-end convolution."""
        return self.conv_kernel // 2

    def output_frames(self, num_frames: int) -> int:
        """T' for T input frames: (T + 2 * padding - kernel) // stride + 1."""
        return (num_frames + 2 * self.conv_padding - self.conv_kernel) // self.conv_stride + 1

    def save(self, path: Path) -> None:
        """Write the config as JSON."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> SpeechConfig:
        """Read a config written by :meth:`save`."""
        raw = json.loads(path.read_text())
        raw["hidden_sizes"] = tuple(raw["hidden_sizes"])
        return cls(**raw)


class SpeechCTC(nn.Module):
    """features [B, T, n_mels] → log_probs [B, T', vocab] (log-softmax over the vocabulary)."""

    feature_mean: torch.Tensor
    feature_scale: torch.Tensor

    def __init__(self, config: SpeechConfig) -> None:
        super().__init__()
        self.config = config
        # Per-bin scaling after per-utterance mean removal, set from training statistics by
        # the recipe (see :meth:`normalise`).
        self.register_buffer("feature_mean", torch.zeros(config.n_mels))
        self.register_buffer("feature_scale", torch.ones(config.n_mels))
        self.conv = nn.Conv1d(
            config.n_mels,
            config.conv_channels,
            config.conv_kernel,
            stride=config.conv_stride,
            padding=config.conv_padding,
        )
        grus = []
        width = config.conv_channels
        for hidden in config.hidden_sizes:
            grus.append(nn.GRU(width, hidden, batch_first=True, bidirectional=True))
            width = 2 * hidden
        self.grus = nn.ModuleList(grus)
        self.head = nn.Linear(width, config.vocab_size)

    def gru_layers(self) -> list[nn.GRU]:
        """The bidirectional GRU layers, first to last."""
        return [m for m in self.grus if isinstance(m, nn.GRU)]

    def centred(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features minus each utterance's mean speech frame, and the speech-frame mask.

        Subtracting the per-utterance mean removes the level and the voice's average spectral
        shape, which helps on voices never heard in training. Padding and
        digital silence are all-zero frames: they are left out of the mean, so an item's
        features do not depend on how much padding its batch adds.
        """
        speech = (features.sum(-1, keepdim=True) > 0).to(features.dtype)
        count = speech.sum(1, keepdim=True).clamp(min=1.0)
        mean = (features * speech).sum(1, keepdim=True) / count
        return features - mean, speech

    def normalise(self, features: torch.Tensor) -> torch.Tensor:
        """Centred, scaled features; padding and silence frames become exactly 0."""
        centred, speech = self.centred(features)
        return (centred - self.feature_mean) * self.feature_scale * speech

    def front_end(self, features: torch.Tensor) -> torch.Tensor:
        """Normalised features through the strided conv and ReLU: [B, T', conv_channels]."""
        x = self.normalise(features)
        return torch.relu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Per-frame log-probabilities over the vocabulary."""
        x = self.front_end(features)
        for gru, hidden in zip(self.gru_layers(), self.config.hidden_sizes, strict=True):
            # An explicit zero state sized from the input keeps the batch axis dynamic in ONNX.
            h0 = x.new_zeros(2, 1, hidden).expand(2, x.shape[0], hidden)
            x, _ = gru(x, h0.contiguous())
        return torch.log_softmax(self.head(x), dim=-1)


def load_checkpoint(directory: Path) -> SpeechCTC:
    """A model from ``config.json`` + ``model.safetensors`` in ``directory``, in eval mode."""
    model = SpeechCTC(SpeechConfig.load(directory / "config.json"))
    model.load_state_dict(load_file(directory / "model.safetensors"))
    return model.eval()


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def export_onnx(module: nn.Module, path: Path, opset: int = 17) -> None:
    """Export a speech module to one self-contained ONNX graph.

    Input ``features`` FP32 [B, T, n_mels] and output ``log_probs`` FP32 [B, T', vocab], with
    B and T dynamic. The TorchScript exporter is used because it writes the weights into the
    single ``.onnx`` file and handles the GRUs with an explicit initial state.
    """
    if not isinstance(module, SpeechCTC):
        raise TypeError(f"expected a SpeechCTC module, got {type(module).__name__}")
    module = module.eval()
    example = torch.zeros(2, 64, module.config.n_mels)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated and warns about the GRU batch size.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["features"],
            output_names=["log_probs"],
            dynamic_axes={
                "features": {0: "batch", 1: "frames"},
                "log_probs": {0: "batch", 1: "out_frames"},
            },
            opset_version=opset,
            dynamo=False,
        )
