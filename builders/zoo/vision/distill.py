"""Time-bounded recovery of a pruned classifier by distillation from the unpruned teacher.

Inputs are augmented crops of the committed distillation images (never eval photos) mixed
with dead-leaves pictures made from them; they go through the serving preprocessing, so the
student learns on exactly what it will be fed. Batch-norm statistics stay frozen: a few
hundred out-of-distribution crops would only corrupt the ImageNet running estimates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from builders.zoo.vision import augment
from builders.zoo.vision.augment import UInt8Image

log = logging.getLogger(__name__)

CROP_PX = 256
"""Augmented crops are made at the preprocessing's resize size, then centre-cropped by it."""


def augmented_batch(
    sources: Sequence[UInt8Image],
    rng: np.random.Generator,
    batch_size: int,
    leaves_fraction: float = 0.5,
) -> list[UInt8Image]:
    """Random crops (flipped, colour-jittered) of ``sources`` and dead-leaves pictures."""
    batch: list[UInt8Image] = []
    for _ in range(batch_size):
        if rng.random() < leaves_fraction:
            batch.append(augment.dead_leaves(rng, CROP_PX, sources))
            continue
        image = sources[int(rng.integers(len(sources)))]
        crop = augment.random_resized_crop(image, rng, CROP_PX, scale=(0.08, 1.0))
        if rng.random() < 0.5:
            crop = augment.hflip(crop, rng)
        batch.append(augment.colour_jitter(crop, rng))
    return batch


def _freeze_batch_norm(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def distill(
    student: nn.Module,
    teacher: nn.Module,
    sources: Sequence[UInt8Image],
    preprocess: Callable[[list[UInt8Image]], npt.NDArray[np.float32]],
    steps: int,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 1e-4,
    temperature: float = 2.0,
    train_px: int | None = None,
) -> nn.Module:
    """Fine-tune ``student`` to match ``teacher``'s softened outputs for ``steps`` steps.

    Args:
        student: The module to train; it is trained in place and returned in eval mode.
        teacher: The reference module; only run forward.
        sources: uint8 RGB images to cut crops from.
        preprocess: The serving preprocessing (uint8 images → normalised [B, C, S, S]).
        steps: Optimizer steps (a count, not a clock, so the result is reproducible).
        seed: Seed for crops, data order and dropout.
        batch_size: Images per step.
        lr: Adam learning rate.
        temperature: Softmax temperature of the distillation loss.
        train_px: Downscale inputs to this side for training (cheaper steps), or None.

    Returns:
        ``student``, in eval mode.
    """
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # dropout draws from torch's global generator
    teacher.eval()
    student.train()
    _freeze_batch_norm(student)
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=lr)
    start = time.monotonic()
    for step in range(1, steps + 1):
        images = torch.from_numpy(preprocess(augmented_batch(sources, rng, batch_size)))
        if train_px is not None:
            images = F.interpolate(images, size=train_px, mode="bilinear", antialias=True)
        with torch.no_grad():
            target = F.softmax(teacher(images) / temperature, dim=1)
        log_probs = F.log_softmax(student(images) / temperature, dim=1)
        loss = F.kl_div(log_probs, target, reduction="batchmean") * temperature**2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step % 10 == 0:
            elapsed_s = time.monotonic() - start
            log.info("distill step %d  loss %.4f  %.0fs", step, loss.item(), elapsed_s)
    log.info("distilled %d steps in %.0fs", steps, time.monotonic() - start)
    return student.eval()


def calibration_images(
    sources: Sequence[UInt8Image], count: int, seed: int = 0
) -> list[UInt8Image]:
    """A fixed mix of distillation crops and dead-leaves pictures (half each, interleaved).

    Used for pruning statistics and int8 calibration; never drawn from the eval photos.
    """
    rng = np.random.default_rng(seed)
    images: list[UInt8Image] = []
    for i in range(count):
        if i % 2 == 0:
            images += augmented_batch(sources, rng, 1, leaves_fraction=0.0)
        else:
            images.append(augment.dead_leaves(rng, CROP_PX, sources))
    return images
