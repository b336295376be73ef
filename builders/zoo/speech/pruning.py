"""Structured pruning of :class:`SpeechCTC`: conv channels and GRU hidden units.

A unit's importance is how much signal it sends on: its mean absolute activation on
calibration audio times the norm of the weights that read it. Removing a conv channel drops
its filter and the matching input columns of the first GRU; removing a GRU hidden unit drops
its rows in all three gates (input and recurrent weights, both biases), its recurrent column,
and the columns that read it in the next GRU layer or the output head. The result is the same
class built from a smaller :class:`SpeechConfig`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from builders.zoo.speech.model import SpeechCTC


def _keep(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Sorted indices of the ``1 - ratio`` highest scores (at least one)."""
    count = max(1, round(scores.numel() * (1.0 - ratio)))
    return torch.topk(scores, count).indices.sort().values


def _gate_rows(units: torch.Tensor, hidden: int) -> torch.Tensor:
    """Rows of the stacked (reset, update, new) gate weights that belong to ``units``."""
    return torch.cat([units + g * hidden for g in range(3)])


@torch.no_grad()
def _activations(
    model: SpeechCTC, features: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Mean |activation| per conv channel and per GRU output unit (both directions)."""
    conv_sum = torch.zeros(model.config.conv_channels)
    gru_sums = [torch.zeros(2 * h) for h in model.config.hidden_sizes]
    frames = 0
    for feats in features:
        x = model.front_end(feats)
        conv_sum += x.abs().sum(dim=(0, 1))
        for gru, total in zip(model.gru_layers(), gru_sums, strict=True):
            x, _ = gru(x)
            total += x.abs().sum(dim=(0, 1))
        frames += x.shape[0] * x.shape[1]
    return conv_sum / frames, [s / frames for s in gru_sums]


def _readers(model: SpeechCTC, layer: int) -> nn.Module:
    """The module that reads GRU ``layer``'s output: the next GRU or the head."""
    grus = model.gru_layers()
    return grus[layer + 1] if layer + 1 < len(grus) else model.head


def _input_weights(reader: nn.Module) -> list[torch.Tensor]:
    """Weight matrices whose columns read the input of ``reader``."""
    if isinstance(reader, nn.GRU):
        return [_param(reader, "weight_ih_l0"), _param(reader, "weight_ih_l0_reverse")]
    if isinstance(reader, nn.Linear):
        return [reader.weight]
    raise TypeError(f"unexpected module {type(reader).__name__}")


def _param(module: nn.Module, name: str) -> torch.Tensor:
    value = getattr(module, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{type(module).__name__}.{name} is not a tensor")
    return value


def _out_norm(weights: list[torch.Tensor]) -> torch.Tensor:
    """Per-input-column L2 norm over several weight matrices."""
    return torch.sqrt(sum((w.detach() ** 2).sum(dim=0) for w in weights))  # type: ignore[arg-type]


def prune(
    model: SpeechCTC,
    ratio: float,
    features: Sequence[torch.Tensor],
    conv_ratio: float | None = None,
) -> SpeechCTC:
    """Remove ``ratio`` of each GRU layer's hidden units and ``conv_ratio`` of the conv channels.

    Args:
        model: the module to prune (left unchanged).
        ratio: fraction of units to remove per GRU layer, in [0, 1).
        features: calibration batches [B, T, n_mels] used to measure activations.
        conv_ratio: fraction of the front-end conv's channels to remove; ``ratio`` if None.

    Returns:
        A new, smaller :class:`SpeechCTC` in eval mode.
    """
    conv_ratio = ratio if conv_ratio is None else conv_ratio
    if not (0.0 <= ratio < 1.0 and 0.0 <= conv_ratio < 1.0):
        raise ValueError(f"ratios must be in [0, 1), got {ratio} and {conv_ratio}")
    model = model.eval()
    conv_act, gru_acts = _activations(model, features)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    # Front-end conv channels, read by the first GRU's input weights.
    conv_keep = _keep(conv_act * _out_norm(_input_weights(model.gru_layers()[0])), conv_ratio)
    state["conv.weight"] = state["conv.weight"][conv_keep]
    state["conv.bias"] = state["conv.bias"][conv_keep]
    for suffix in ("", "_reverse"):
        key = f"grus.0.weight_ih_l0{suffix}"
        state[key] = state[key][:, conv_keep]

    hidden_sizes = []
    for layer, gru in enumerate(model.gru_layers()):
        hidden = model.config.hidden_sizes[layer]
        reader = _readers(model, layer)
        outgoing = _out_norm(_input_weights(reader))
        kept_columns = []
        for direction, suffix in enumerate(("", "_reverse")):
            units = slice(direction * hidden, (direction + 1) * hidden)
            recurrent = _out_norm([_param(gru, f"weight_hh_l0{suffix}")])
            score = gru_acts[layer][units] * torch.sqrt(outgoing[units] ** 2 + recurrent**2)
            keep = _keep(score, ratio)
            rows = _gate_rows(keep, hidden)
            prefix = f"grus.{layer}."
            for name in ("weight_ih_l0", "bias_ih_l0", "bias_hh_l0"):
                state[prefix + name + suffix] = state[prefix + name + suffix][rows]
            hh = prefix + "weight_hh_l0" + suffix
            state[hh] = state[hh][rows][:, keep]
            kept_columns.append(keep + direction * hidden)
        columns = torch.cat(kept_columns)
        if isinstance(reader, nn.GRU):
            for suffix in ("", "_reverse"):
                key = f"grus.{layer + 1}.weight_ih_l0{suffix}"
                state[key] = state[key][:, columns]
        else:
            state["head.weight"] = state["head.weight"][:, columns]
        hidden_sizes.append(len(kept_columns[0]))

    config = dataclasses.replace(
        model.config, conv_channels=len(conv_keep), hidden_sizes=tuple(hidden_sizes)
    )
    pruned = SpeechCTC(config)
    pruned.load_state_dict(state)
    return pruned.eval()
