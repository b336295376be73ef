"""Structured pruning of attention heads and feed-forward units, and a timed recovery."""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import replace

import numpy as np
import torch

from builders.zoo.translation import batches, recipe, tokenizer
from builders.zoo.translation.corpus import read_split
from builders.zoo.translation.model import Attention, FeedForward, Translator

IMPORTANCE_BATCHES = 8
IMPORTANCE_TOKENS = 2048
PRUNE_SEED = 4321
RECOVER_LR = 1.5e-3
RECOVER_TOKENS = 3072
RECOVER_WARMUP_STEPS = 20
RECOVER_DISTILL_WEIGHT = 0.0
"""Share of the loss that is KL to the teacher. In budgets of one or two minutes on a CPU the
teacher's extra forward pass costs more steps than its soft targets give back (half the units
pruned, 90 s, test subset: 22.9 BLEU with cross-entropy alone, 19.9 to 21.9 with 20-50 %
distillation), so recovery is plain label-smoothed cross-entropy unless this is raised."""


@functools.cache
def _train_items() -> tuple[batches.EncodedPair, ...]:
    # tokenized once per process: recovery budgets should be spent on training steps
    processor, settings = tokenizer.load_spm(), tokenizer.load_settings()
    return tuple(batches.encode_pairs(processor, read_split("train"), settings))


def train_batches(max_tokens: int, seed: int) -> list[batches.Batch]:
    """One seeded epoch of training batches of at most ``max_tokens`` padded tokens."""
    pad_id = tokenizer.load_settings()["pad_id"]
    return batches.epoch_batches(
        list(_train_items()), max_tokens, pad_id, np.random.default_rng(seed)
    )


def unit_importance(model: Translator, batch_list: list[batches.Batch]) -> dict[str, torch.Tensor]:
    """Score every head and feed-forward unit by the first-order Taylor estimate of its removal.

    Removing a head (a unit) zeroes its columns of the output (down) projection, so the
    per-batch loss change is about ``sum(grad * weight)`` over those columns; the score
    sums its square over batches (Molchanov et al., 2019).

    Returns:
        For each attention and feed-forward module name, one score per head or unit.
    """
    model.eval()  # no dropout: the same model and batches always give the same scores
    scores: dict[str, torch.Tensor] = {}
    for batch in batch_list:
        model.zero_grad(set_to_none=True)
        loss = recipe.sequence_loss(model, batch, label_smoothing=0.0)
        loss.backward()  # type: ignore[no-untyped-call]
        for name, module in model.named_modules():
            if isinstance(module, Attention):
                w = module.out.weight
                per_column = (w * _grad(w)).sum(0)
                taylor = per_column.view(module.heads, module.head_dim).sum(1)
            elif isinstance(module, FeedForward):
                w = module.down.weight
                taylor = (w * _grad(w)).sum(0)
            else:
                continue
            scores[name] = scores.get(name, 0) + taylor.detach() ** 2
    model.zero_grad(set_to_none=True)
    return scores


def _grad(weight: torch.Tensor) -> torch.Tensor:
    if weight.grad is None:
        raise RuntimeError("no gradient reached a prunable weight")
    return weight.grad


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    return scores.topk(count).indices.sort().values


def shrink(model: Translator, scores: dict[str, torch.Tensor], heads: int, ffn: int) -> Translator:
    """A smaller :class:`Translator` keeping, per module, the best ``heads`` and ``ffn`` units."""
    pruned = Translator(replace(model.cfg, heads=heads, ffn=ffn))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, module in model.named_modules():
        if isinstance(module, Attention):
            keep = _keep(scores[name], heads)
            rows = (keep[:, None] * module.head_dim + torch.arange(module.head_dim)).flatten()
            for proj in ("q", "k", "v"):
                state[f"{name}.{proj}.weight"] = state[f"{name}.{proj}.weight"][rows]
                state[f"{name}.{proj}.bias"] = state[f"{name}.{proj}.bias"][rows]
            state[f"{name}.out.weight"] = state[f"{name}.out.weight"][:, rows]
        elif isinstance(module, FeedForward):
            keep = _keep(scores[name], ffn)
            state[f"{name}.up.weight"] = state[f"{name}.up.weight"][keep]
            state[f"{name}.up.bias"] = state[f"{name}.up.bias"][keep]
            state[f"{name}.down.weight"] = state[f"{name}.down.weight"][:, keep]
    pruned.load_state_dict(state)
    return pruned.eval()


def prune(model: Translator, ratio: float) -> Translator:
    """Remove ``ratio`` of the heads of every attention block and of every block's FFN units.

    Each block keeps at least one head and one unit; which ones is decided by
    :func:`unit_importance` on a fixed sample of training batches.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    cfg = model.cfg
    heads = max(1, round(cfg.heads * (1 - ratio)))
    ffn = max(1, round(cfg.ffn * (1 - ratio)))
    sample = train_batches(IMPORTANCE_TOKENS, PRUNE_SEED)[:IMPORTANCE_BATCHES]
    return shrink(model, unit_importance(model, sample), heads, ffn)


def recover(model: Translator, teacher: Translator, steps: int) -> Translator:
    """Fine-tune a copy of ``model`` on the train split for ``steps`` optimizer steps.

    ``teacher`` (the unpruned model) is distilled when ``RECOVER_DISTILL_WEIGHT`` is above 0.
    The learning rate warms up, then follows a cosine over the steps, so a short or a long
    recovery both end on a small step size. Batches and dropout are seeded: the same steps
    give the same model.
    """
    if steps <= 0:
        return model
    student = copy.deepcopy(model)
    teacher.eval()
    torch.manual_seed(PRUNE_SEED)  # dropout draws from torch's global generator
    optimizer = recipe.make_optimizer(student, RECOVER_LR, weight_decay=0.01)

    def schedule(step: int) -> float:
        warm = min(1.0, (step + 1) / RECOVER_WARMUP_STEPS)
        return warm * 0.5 * (1 + math.cos(math.pi * step / steps))

    pad_id = tokenizer.load_settings()["pad_id"]
    recipe.fit(
        student,
        batches.endless_batches(list(_train_items()), RECOVER_TOKENS, pad_id, PRUNE_SEED),
        optimizer,
        schedule,
        lambda step: step >= steps,
        label_smoothing=0.1,
        clip_norm=1.0,
        teacher=teacher if RECOVER_DISTILL_WEIGHT > 0 else None,
        distill_weight=RECOVER_DISTILL_WEIGHT,
    )
    return student.eval()
