"""Structured pruning of :class:`DigitsCNN`: conv channels by BN gamma, hidden units by L1.

A conv channel whose batch-norm scale |γ| is small contributes little after normalisation
(the network-slimming criterion); a hidden unit matters in proportion to the L1 norms of the
weights that feed it and read it. Removing a channel deletes its filter, its BN entry and
the next layer's input slice, so the result is the same class with smaller widths.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from builders.zoo.digits.model import FINAL_PX, DigitsCNN


def keep_count(width: int, ratio: float) -> int:
    """Units kept when removing ``ratio`` of ``width`` (at least one)."""
    return max(1, round(width * (1.0 - ratio)))


def _strongest(importance: torch.Tensor, count: int) -> torch.Tensor:
    # Sorted so the kept units stay in their original order.
    return torch.sort(torch.topk(importance, count).indices).values


def _bn(block: nn.Sequential) -> nn.BatchNorm2d:
    bn = block[1]
    assert isinstance(bn, nn.BatchNorm2d)
    return bn


@torch.no_grad()
def prune_digits(model: DigitsCNN, ratio: float) -> DigitsCNN:
    """Remove ``ratio`` of every conv layer's channels and of the hidden units.

    Args:
        model: The module to prune; it is not modified.
        ratio: Fraction of units to remove per layer, in [0, 1).

    Returns:
        A new, smaller ``DigitsCNN`` in eval mode.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    blocks = (model.conv1, model.conv2, model.conv3)
    keeps = [
        _strongest(_bn(b).weight.detach().abs(), keep_count(_bn(b).num_features, ratio))
        for b in blocks
    ]
    hidden_importance = model.fc1.weight.abs().sum(1) * model.fc2.weight.abs().sum(0)
    keep_hidden = _strongest(hidden_importance, keep_count(model.cfg.hidden, ratio))

    state = {k: v.clone() for k, v in model.state_dict().items()}
    previous: torch.Tensor | None = None
    for name, keep in zip(("conv1", "conv2", "conv3"), keeps, strict=True):
        weight = state[f"{name}.0.weight"][keep]
        state[f"{name}.0.weight"] = weight if previous is None else weight[:, previous]
        for field in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.1.{field}"] = state[f"{name}.1.{field}"][keep]
        previous = keep
    # fc1 reads the last feature map flattened channel-major: channel c owns a run of columns.
    cells = FINAL_PX * FINAL_PX
    columns = (keeps[2][:, None] * cells + torch.arange(cells)).reshape(-1)
    state["fc1.weight"] = state["fc1.weight"][keep_hidden][:, columns]
    state["fc1.bias"] = state["fc1.bias"][keep_hidden]
    state["fc2.weight"] = state["fc2.weight"][:, keep_hidden]

    widths = (len(keeps[0]), len(keeps[1]), len(keeps[2]))
    pruned = DigitsCNN(replace(model.cfg, conv_channels=widths, hidden=len(keep_hidden)))
    pruned.load_state_dict(state, strict=True)
    return pruned.eval()
