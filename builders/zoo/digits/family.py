"""The ``digits`` zoo family: 8×8 handwritten digits → labels "0".."9" with a small CNN."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load_file
from torch import nn

from builders.zoo.api import MetricSpec
from builders.zoo.base import FamilyBase, as_module, torch_threads
from builders.zoo.digits import data, recipe
from builders.zoo.digits.model import INPUT_PX, DigitsCNN, DigitsConfig
from builders.zoo.digits.prune import prune_digits
from builders.zoo.vision.common import export_image_classifier, single_image_batches, torch_runner
from gateway.tasks.base import RunGraph
from gateway.tasks.vision import ImageTask

RECOVERY_LR = 1e-3
"""Peak learning rate of the recovery fine-tune (a third of the training rate)."""
RECOVERY_EPOCHS = 30
"""Longest recovery fine-tune (about 7 s); a smaller budget stops it sooner."""
RECOVER_STEPS_PER_S = 100.0
"""Recovery steps per second of a 2-core CPU (see ``ZooFamily.recover``)."""


class DigitsFamily(FamilyBase):
    """Zoo family over the committed digits checkpoint and splits."""

    name = "digits"
    task = "image-labels"
    metric = MetricSpec("top1", higher_is_better=True)
    assets_dir = recipe.ASSETS_DIR
    recover_budget_s = 60.0
    task_type = ImageTask
    default_checkpoint_dir = recipe.CHECKPOINT_DIR

    def sample_items(self, count: int) -> list[Any]:
        """Held-out digits as uint8 images, the form clients send, for profiling."""
        images, _ = data.load_split("eval")
        return [images[i] for i in range(min(count, len(images)))]

    def load(self) -> nn.Module:
        """Load the checkpoint into a :class:`DigitsCNN` in eval mode."""
        model = DigitsCNN(DigitsConfig.load(self.checkpoint_dir / "config.json"))
        model.load_state_dict(load_file(str(self.checkpoint_dir / "model.safetensors")))
        return model.eval()

    def train(self, out_dir: Path) -> dict[str, float]:
        """Run the seeded recipe on the committed training split into ``out_dir``."""
        return recipe.train(out_dir)

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Export to one graph: ``images`` [B, 1, 8, 8] → ``logits`` [B, 10]."""
        export_image_classifier(as_module(module, DigitsCNN), path, 1, INPUT_PX)

    def evaluate(self, run_graph: RunGraph, limit: int | None = None) -> dict[str, float]:
        """Top-1 accuracy (percent) on the first ``limit`` of the 450 held-out digits."""
        return recipe.evaluate(run_graph, limit)

    def torch_runner(self, module: nn.Module) -> RunGraph:
        """A graph runner over ``module`` with the ONNX graph's tensor names."""
        return torch_runner(module)

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """Up to ``count`` single-digit ``images`` batches from the calibration split."""
        images, _ = data.load_split("calibration")
        return single_image_batches(recipe.task(), list(images), count)

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Remove ``ratio`` of every conv layer's channels (by BN |γ|) and hidden units (L1)."""
        return prune_digits(as_module(module, DigitsCNN), ratio)

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Fine-tune with cross-entropy on the training split.

        ``budget_s`` becomes a step count at ``RECOVER_STEPS_PER_S`` (at most
        ``RECOVERY_EPOCHS`` epochs): reproducible results. The labels are available and
        exact, so the teacher is not needed here.
        """
        model: DigitsCNN = as_module(module, DigitsCNN)
        cfg = recipe.RecipeConfig()
        images, labels = data.load_split("train")
        inputs = recipe.graph_inputs(images)
        targets = torch.from_numpy(labels.astype(np.int64))
        with torch_threads(cfg.threads):
            steps = min(
                recipe.steps_for(RECOVERY_EPOCHS, len(targets), cfg.batch_size),
                round(budget_s * RECOVER_STEPS_PER_S),
            )
            if steps > 0:
                recipe.fit(model, inputs, targets, steps, RECOVERY_LR, cfg, lambda _: None)
        return model


FAMILY = DigitsFamily()
