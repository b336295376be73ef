"""Seeded training recipe of the digits family (a few seconds on 2 CPU threads).

``python -m builders.zoo.digits.recipe`` trains :class:`DigitsCNN` on the committed training
split, scores it in torch and ONNX Runtime on the committed held-out split and writes
``checkpoint/{model.safetensors,config.json,metrics.json}``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file

from builders.zoo.digits import data
from builders.zoo.digits.model import DigitsCNN, DigitsConfig, count_parameters
from builders.zoo.vision.common import (
    Log,
    export_image_classifier,
    percent,
    top1_labels,
    torch_runner,
)
from gateway.tasks.base import RunGraph
from gateway.tasks.onnx_runner import onnx_graph_runner
from gateway.tasks.vision import ImageTask

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CHECKPOINT_DIR = PACKAGE_DIR / "checkpoint"


@dataclass(frozen=True)
class RecipeConfig:
    """Hyper-parameters of the training run."""

    seed: int = 0
    epochs: int = 100
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    max_shift_px: int = 1
    """Random translation of each training digit, in pixels, as augmentation."""
    threads: int = 1
    """Torch threads; the batches are tiny, so a second thread only adds contention."""

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size, self.threads) < 1 or self.max_shift_px < 0:
            raise ValueError(f"invalid recipe config: {self}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError("lr must be positive and weight_decay non-negative")


def task() -> ImageTask:
    """The serving pre/post-processing of the family."""
    return ImageTask(ASSETS_DIR)


def graph_inputs(images: npt.NDArray[np.uint8]) -> torch.Tensor:
    """uint8 digits [N, 8, 8] → the graph's ``images`` [N, 1, 8, 8] via the serving path."""
    return torch.from_numpy(task().preprocess(list(images)))


def random_shift(batch: torch.Tensor, max_px: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_px`` pixels per axis, filling with 0 (no ink)."""
    if max_px == 0:
        return batch
    size, span = batch.shape[-1], 2 * max_px + 1
    padded = F.pad(batch, (max_px, max_px, max_px, max_px))
    # Every possible shift of the whole batch, then one pick per image.
    shifted = torch.stack(
        [padded[..., dy : dy + size, dx : dx + size] for dy in range(span) for dx in range(span)]
    )
    choice = torch.randint(0, span * span, (batch.shape[0],), generator=generator)
    return shifted[choice, torch.arange(batch.shape[0])]


def fit(
    model: DigitsCNN,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float,
    cfg: RecipeConfig,
    log: Log,
) -> int:
    """Cross-entropy training with AdamW and a cosine schedule over ``steps`` steps.

    Returns the number of steps taken. The model is left in eval mode.
    """
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # dropout draws from the global generator
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model.train()
    start = time.monotonic()
    step = 0
    while step < steps:
        order = torch.randperm(len(labels), generator=generator)
        for first in range(0, len(labels), cfg.batch_size):
            index = order[first : first + cfg.batch_size]
            batch = random_shift(inputs[index], cfg.max_shift_px, generator)
            loss = F.cross_entropy(model(batch), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            schedule.step()
            step += 1
            if step >= steps:
                break
        if step % (10 * -(-len(labels) // cfg.batch_size)) == 0 or step >= steps:
            log(f"step {step}/{steps}  loss {loss.item():.4f}  {time.monotonic() - start:.1f}s")
    model.eval()
    return step


def steps_for(epochs: int, examples: int, batch_size: int) -> int:
    """Optimizer steps in ``epochs`` passes over ``examples`` (last batch may be short)."""
    return epochs * -(-examples // batch_size)


def evaluate(run_graph: RunGraph, limit: int | None = None) -> dict[str, float]:
    """Top-1 accuracy (percent) on the first ``limit`` held-out digits."""
    images, labels = data.load_split("eval")
    images, labels = images[:limit], labels[:limit]
    predicted = top1_labels(task(), run_graph, list(images))
    hits = sum(p == str(int(y)) for p, y in zip(predicted, labels, strict=True))
    return {"top1": percent(hits, len(labels)), "images": float(len(labels))}


def train(out_dir: Path, cfg: RecipeConfig | None = None, log: Log = print) -> dict[str, float]:
    """Train from the seed, score in torch and ONNX Runtime, write the checkpoint to out_dir."""
    cfg = cfg or RecipeConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        images, labels = data.load_split("train")
        inputs, targets = graph_inputs(images), torch.from_numpy(labels.astype(np.int64))
        torch.manual_seed(cfg.seed)
        model = DigitsCNN(DigitsConfig())
        log(f"training {count_parameters(model)} parameters on {len(targets)} digits")
        start = time.monotonic()
        steps = steps_for(cfg.epochs, len(targets), cfg.batch_size)
        fit(model, inputs, targets, steps, cfg.lr, cfg, log)
        train_s = time.monotonic() - start
    finally:
        torch.set_num_threads(threads)

    metrics = {"top1": evaluate(torch_runner(model))["top1"]}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_image_classifier(model, path, 1, 8)
        metrics["top1_onnx"] = evaluate(onnx_graph_runner(path))["top1"]
    metrics |= {
        "eval_images": float(data.EVAL_SIZE),
        "parameters": float(count_parameters(model)),
        "train_seconds": round(train_s, 1),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_dir / "model.safetensors"))
    model.cfg.save(out_dir / "config.json")
    record = {**metrics, "recipe": asdict(cfg)}
    (out_dir / "metrics.json").write_text(json.dumps(record, indent=2) + "\n")
    log(f"top1 {metrics['top1']:.2f} (torch), {metrics['top1_onnx']:.2f} (ONNX Runtime)")
    return metrics


def main() -> None:
    """Command line: rerun the recipe into the committed checkpoint (or --out-dir)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out-dir", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--splits", action="store_true", help="first rewrite the data splits")
    args = parser.parse_args()
    if args.splits:
        data.write_splits()
    train(args.out_dir)


if __name__ == "__main__":
    main()
