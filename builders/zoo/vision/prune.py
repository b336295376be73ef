"""Structured pruning of EfficientNet-Lite: MBConv hidden channels and head channels.

Removing hidden channel c of a block deletes its expand-conv filter and BN entry, its
depthwise filter and BN entry, and the project conv's input column c; removing head channel
c deletes a head-conv filter, its BN entry and a classifier input column. The result is the
same class with smaller widths in its config.

Which channels go is decided from activations on a few images: the error a removed channel
causes is its deviation from its mean, weighted by the (BN-normalised) weights that read it,
so the importance of c is ``std(a_c) · ||w_c||₂``. Its mean contribution is not lost: it is
folded into the next layer (the project BN's running mean, the classifier's bias), which keeps
channels with large but nearly constant output cheap to remove.

The kept channels then take over what the removed ones did: block by block, the project conv
(a linear map at every position) is refitted by least squares so that the pruned network
reproduces the original block outputs on the same images (:func:`reconstruct_outputs`).
The images are never eval photos: the family passes distillation crops and dead-leaves
pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from builders.zoo.vision.model import EfficientNetLite, EfficientNetLiteConfig, MBConv

RIDGE = 0.1
"""Strength of the pull towards the trained weights in the least-squares refits."""
CHANNEL_MULTIPLE = 8
"""Kept widths are rounded to this multiple, which vectorised CPU kernels handle best."""


@dataclass
class _Moments:
    """Running per-channel sums for the mean and variance of an activation."""

    count: int = 0
    total: torch.Tensor | None = None
    total_sq: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        """Add a [N, C] batch of observations."""
        values = values.double()
        self.count += values.shape[0]
        s, sq = values.sum(0), (values * values).sum(0)
        self.total = s if self.total is None else self.total + s
        self.total_sq = sq if self.total_sq is None else self.total_sq + sq

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and standard deviation."""
        if self.total is None or self.total_sq is None:
            raise RuntimeError("no activations were recorded")
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return mean, var.sqrt()


@torch.no_grad()
def activation_moments(
    model: EfficientNetLite, images: torch.Tensor, batch_size: int = 16
) -> tuple[list[_Moments], _Moments]:
    """Moments of each block's hidden activation (per position) and of the pooled features."""
    blocks = [_Moments() for _ in model.blocks]
    head = _Moments()
    model.eval()
    for start in range(0, images.shape[0], batch_size):
        x = model.stem(images[start : start + batch_size])
        for block, moments in zip(model.blocks, blocks, strict=True):
            assert isinstance(block, MBConv)
            hidden = block.hidden(x)
            moments.add(hidden.permute(0, 2, 3, 1).reshape(-1, hidden.shape[1]))
            out = block.project(hidden)
            x = out + x if block.cfg.residual else out
        head.add(torch.flatten(model.pool(model.head(x)), 1))
    return blocks, head


def keep_count(width: int, ratio: float, multiple: int = CHANNEL_MULTIPLE) -> int:
    """Channels kept when pruning ``ratio`` of ``width``, rounded to ``multiple``."""
    kept = round(width * (1.0 - ratio) / multiple) * multiple
    return min(width, max(multiple, kept))


def _top_channels(importance: torch.Tensor, count: int) -> torch.Tensor:
    # Stable order: the kept channels stay in their original order.
    return torch.sort(torch.topk(importance, count).indices).values


def _bn_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    assert bn.weight is not None and bn.running_var is not None
    return bn.weight / torch.sqrt(bn.running_var + bn.eps)


def _take(state: dict[str, torch.Tensor], prefix: str, keep: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        key = f"{prefix}.{name}"
        if key in state:
            state[key] = state[key][keep]


def uniform_widths(
    cfg: EfficientNetLiteConfig, ratio: float, head_ratio: float | None = None
) -> tuple[list[int], int]:
    """Hidden width of every block and head width after removing ``ratio`` of each.

    Blocks without expansion keep their width (their hidden channels are the stem's output).
    """
    head_ratio = ratio if head_ratio is None else head_ratio
    if not (0.0 <= ratio < 1.0 and 0.0 <= head_ratio < 1.0):
        raise ValueError(f"pruning ratios must be in [0, 1), got {ratio}, {head_ratio}")
    hidden = [
        keep_count(b.hidden_channels, ratio) if b.expand else b.hidden_channels for b in cfg.blocks
    ]
    return hidden, keep_count(cfg.head_channels, head_ratio)


@torch.no_grad()
def prune_efficientnet(
    model: EfficientNetLite,
    ratio: float,
    images: torch.Tensor,
    head_ratio: float | None = None,
    reconstruct: bool = True,
) -> EfficientNetLite:
    """Remove the least important ``ratio`` of each expanding block's hidden channels.

    Args:
        model: The module to prune; it is not modified.
        ratio: Fraction of hidden channels to remove, in [0, 1).
        images: Normalised images [N, 3, 224, 224] for the activation statistics.
        head_ratio: Fraction of the head's channels to remove; defaults to ``ratio``.
        reconstruct: Refit the layers after pruned channels by least squares
            (:func:`reconstruct_outputs`).

    Returns:
        A new ``EfficientNetLite`` in eval mode with the smaller widths.
    """
    hidden, head = uniform_widths(model.cfg, ratio, head_ratio)
    return prune_to_widths(model, hidden, head, images, reconstruct)


@torch.no_grad()
def prune_to_widths(
    model: EfficientNetLite,
    hidden_widths: list[int],
    head_width: int,
    images: torch.Tensor,
    reconstruct: bool = True,
) -> EfficientNetLite:
    """Keep the ``hidden_widths[i]`` (and ``head_width``) most important channels.

    Block i keeps its ``hidden_widths[i]`` most important hidden channels, the head its
    ``head_width`` most important ones; see :func:`prune_efficientnet`.
    """
    model.eval()
    block_moments, head_moments = activation_moments(model, images)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    blocks = zip(model.blocks, block_moments, hidden_widths, strict=True)
    for i, (block, moments, kept) in enumerate(blocks):
        assert isinstance(block, MBConv)
        width = block.cfg.hidden_channels
        if kept == width:
            continue
        if not block.cfg.expand or not 0 < kept < width:
            raise ValueError(f"block {i} cannot go from {width} to {kept} hidden channels")
        mean, std = moments.mean_std()
        project = block.project.conv.weight[:, :, 0, 0].double()  # [out, hidden]
        weighted = project * _bn_scale(block.project.bn).double()[:, None]
        keep = _top_channels(std * weighted.norm(dim=0), kept)
        drop = torch.ones(width, dtype=torch.bool)
        drop[keep] = False
        p = f"blocks.{i}"
        # The project BN sees z - Δ once the dropped channels are gone; shift its mean by Δ.
        delta = (project[:, drop] @ mean[drop]).float()
        state[f"{p}.project.bn.running_mean"] = state[f"{p}.project.bn.running_mean"] - delta
        state[f"{p}.project.conv.weight"] = state[f"{p}.project.conv.weight"][:, keep]
        for layer in ("expand", "depthwise"):
            state[f"{p}.{layer}.conv.weight"] = state[f"{p}.{layer}.conv.weight"][keep]
            _take(state, f"{p}.{layer}.bn", keep)

    if not 0 < head_width <= model.cfg.head_channels:
        raise ValueError(f"head width {head_width} is not in 1..{model.cfg.head_channels}")
    mean, std = head_moments.mean_std()
    fc = model.fc.weight.double()
    keep = _top_channels(std * fc.norm(dim=0), head_width)
    drop = torch.ones(model.cfg.head_channels, dtype=torch.bool)
    drop[keep] = False
    state["fc.bias"] = state["fc.bias"] + (fc[:, drop] @ mean[drop]).float()
    state["fc.weight"] = state["fc.weight"][:, keep]
    state["head.conv.weight"] = state["head.conv.weight"][keep]
    _take(state, "head.bn", keep)

    pruned = EfficientNetLite(model.cfg.with_hidden(hidden_widths, head_width))
    pruned.load_state_dict(state, strict=True)
    pruned.eval()
    if reconstruct:
        reconstruct_outputs(pruned, model, images)
    return pruned


class _LeastSquares:
    """Accumulates normal equations for ``y ≈ W x + b`` over batches of samples."""

    def __init__(self, n_in: int, n_out: int) -> None:
        self.xtx = torch.zeros(n_in + 1, n_in + 1, dtype=torch.float64)
        self.xty = torch.zeros(n_in + 1, n_out, dtype=torch.float64)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add samples ``x`` [N, n_in] with targets ``y`` [N, n_out]."""
        x1 = torch.cat([x.double(), torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)
        self.xtx += x1.T @ x1
        self.xty += x1.T @ y.double()

    def solve(self, ridge: float, prior: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights [n_out, n_in] and bias [n_out], shrunk towards ``prior`` weights.

        The penalty ``ridge · mean(diag XᵀX) · ||W - prior||²`` keeps weights that the
        calibration images do not pin down (few positions in late blocks, images unlike the
        training data) at their trained values instead of at zero.
        """
        n = self.xtx.shape[0] - 1
        strength = ridge * float(self.xtx.diagonal()[:n].mean())
        reg = torch.zeros_like(self.xtx)
        reg[:n, :n] = torch.eye(n, dtype=torch.float64) * strength
        rhs = self.xty.clone()
        rhs[:n] += strength * prior.double().T
        solution = torch.linalg.solve(self.xtx + reg, rhs)  # [n_in + 1, n_out]
        return solution[:n].T.float(), solution[n].float()


def _positions(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


@torch.no_grad()
def reconstruct_outputs(
    pruned: EfficientNetLite,
    original: EfficientNetLite,
    images: torch.Tensor,
    batch_size: int = 16,
    ridge: float = RIDGE,
    refit_classifier: bool = True,
    max_samples: int = 100_000,
) -> None:
    """Refit, block by block, each project conv (and finally the classifier) by least squares.

    Block i's project conv is fitted so that, fed by the *pruned* network's activations, the
    block reproduces the *original* block's output on the same images; errors of earlier
    blocks are therefore corrected rather than accumulated. 1×1 convolutions are linear maps
    at every position, so each fit is one ridge regression over all positions; the intercept
    goes into the BN's running mean (and the classifier's bias). Modifies ``pruned`` in place.
    """
    starts = range(0, len(images), batch_size)
    x_orig = torch.cat([original.stem(images[s : s + batch_size]) for s in starts])
    x_pr = x_orig.clone()
    for blk_pr, blk_orig in zip(pruned.blocks, original.blocks, strict=True):
        assert isinstance(blk_pr, MBConv) and isinstance(blk_orig, MBConv)
        bn = blk_pr.project.bn
        assert bn.running_mean is not None and bn.bias is not None
        scale = _bn_scale(bn)
        fit = _LeastSquares(blk_pr.cfg.hidden_channels, blk_pr.cfg.out_channels)
        # Early blocks see ~10⁵ positions per image; a regular subsample is plenty for a fit.
        positions = len(images) * x_pr.shape[2] * x_pr.shape[3] // blk_pr.cfg.stride**2
        step = max(1, -(-positions // max_samples))
        outs_orig = []
        for s in starts:
            target = blk_orig(x_orig[s : s + batch_size])
            outs_orig.append(target)
            if blk_pr.cfg.residual:
                target = target - x_pr[s : s + batch_size]
            # Undo the BN's affine part; the fitted intercept becomes its running mean.
            z = (target - bn.bias[:, None, None]) / scale[:, None, None]
            hidden = blk_pr.hidden(x_pr[s : s + batch_size])
            fit.add(_positions(hidden)[::step], _positions(z)[::step])
        weight, bias = fit.solve(ridge, blk_pr.project.conv.weight[:, :, 0, 0])
        blk_pr.project.conv.weight.copy_(weight[:, :, None, None])
        bn.running_mean.copy_(-bias)
        x_orig = torch.cat(outs_orig)
        x_pr = torch.cat([blk_pr(x_pr[s : s + batch_size]) for s in starts])

    if not refit_classifier:
        return
    # logits = W · mean_p(a_p) + b = mean_p(W a_p + b): fit the classifier per position.
    fit = _LeastSquares(pruned.cfg.head_channels, pruned.cfg.num_classes)
    for s in starts:
        target = original.fc.weight @ _positions(original.head(x_orig[s : s + batch_size])).T
        fit.add(_positions(pruned.head(x_pr[s : s + batch_size])), target.T + original.fc.bias)
    weight, bias = fit.solve(ridge, pruned.fc.weight)
    pruned.fc.weight.copy_(weight)
    pruned.fc.bias.copy_(bias)
