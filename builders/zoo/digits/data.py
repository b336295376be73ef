"""The digits family's committed splits, cut once from scikit-learn's bundled ``load_digits``.

The 1797 digits are shuffled with a fixed seed: the first ``EVAL_SIZE`` are held out for
evaluation, the rest train the model, and the first ``CALIBRATION_SIZE`` training digits are
the calibration split for int8 quantization. Every split is stored as uint8 8×8 images
(white digit on black, ``round(value · 255 / 16)``) with labels, so evaluation and training
need no scikit-learn and see exactly what a client would send.

``python -m builders.zoo.digits.data`` rewrites the splits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "eval", "calibration")
SEED = 0
EVAL_SIZE = 450
CALIBRATION_SIZE = 200
SKLEARN_MAX = 16.0
"""Largest value in scikit-learn's digits, stored as 255."""

UInt8Array = npt.NDArray[np.uint8]


def to_uint8(values: npt.NDArray[np.float64]) -> UInt8Array:
    """scikit-learn's 0..16 values → uint8 pixels 0..255."""
    pixels: UInt8Array = np.clip(np.round(values * (255.0 / SKLEARN_MAX)), 0, 255).astype(np.uint8)
    return pixels


def write_splits(data_dir: Path = DATA_DIR) -> dict[str, int]:
    """Cut and write ``{train,eval,calibration}.npz``; returns the size of each split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = to_uint8(digits.images)
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(SEED).permutation(len(labels))
    held_out, training = order[:EVAL_SIZE], order[EVAL_SIZE:]
    parts = {"eval": held_out, "train": training, "calibration": training[:CALIBRATION_SIZE]}
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, index in parts.items():
        np.savez_compressed(data_dir / f"{name}.npz", images=images[index], labels=labels[index])
    return {name: len(index) for name, index in parts.items()}


def load_split(name: str, data_dir: Path = DATA_DIR) -> tuple[UInt8Array, UInt8Array]:
    """Images [N, 8, 8] uint8 and labels [N] uint8 of a committed split."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; known: {', '.join(SPLITS)}")
    with np.load(data_dir / f"{name}.npz") as archive:
        return archive["images"], archive["labels"]


def main(log: Callable[[str], None] = print) -> None:
    """Rewrite the splits from scikit-learn and say how large each is."""
    for split, size in write_splits().items():
        log(f"{split}: {size} digits")


if __name__ == "__main__":
    main()
