"""The ``vision`` zoo family: EfficientNet-Lite0 (ImageNet weights from pip) → ImageNet labels.

No ImageNet images are available offline, so the primary metric is ``agreement`` (fidelity
to fp32, not accuracy): the percentage of the committed natural eval images on which a
variant's top-1 label equals the fp32 model's (recorded in
``checkpoint/reference_labels.json``). ``top1`` is accuracy, on the few uncropped photos
whose content has an ImageNet class, against the classes that name them. The source model's
published ImageNet top-1 is 75.1 % (EfficientNet-Lite0, float).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt
import torch
from torch import nn

from builders.zoo.api import MetricSpec
from builders.zoo.base import FamilyBase, as_module, torch_threads
from builders.zoo.vision import data
from builders.zoo.vision.common import (
    Log,
    export_image_classifier,
    percent,
    single_image_batches,
    top1_labels,
    torch_runner,
)
from builders.zoo.vision.distill import calibration_images, distill
from builders.zoo.vision.model import (
    IMAGE_SIZE_PX,
    EfficientNetLite,
    EfficientNetLiteConfig,
    count_parameters,
    load_pretrained,
)
from builders.zoo.vision.prune import prune_efficientnet
from gateway.tasks.base import RunGraph
from gateway.tasks.onnx_runner import onnx_graph_runner
from gateway.tasks.vision import ImageTask, decode_image

CHECKPOINT_DIR = data.FAMILY_DIR / "checkpoint"
REFERENCE_FILE = "reference_labels.json"
PRUNE_CALIBRATION_IMAGES = 128
"""Images whose activations rank channels and refit layers when pruning."""
RECOVERY_THREADS = 1
"""Torch threads while distilling (restored afterwards)."""
RECOVER_STEPS_PER_S = 0.6
"""Recovery steps per second of a 2-core CPU (see ``ZooFamily.recover``)."""


class VisionFamily(FamilyBase):
    """Zoo family over EfficientNet-Lite0 and the committed natural-image sets."""

    name = "vision"
    task = "image-labels"
    metric = MetricSpec("agreement", higher_is_better=True)
    assets_dir = data.ASSETS_DIR
    recover_budget_s = 0.0
    """Pruning's least-squares refit is the recovery. Distilling on crops and dead-leaves
    pictures did not add to it (pruned-25 agreed with fp32 on 52-55 % of the eval images
    after the refit alone, 51-54 % after 60 s of distillation), so no time goes to it unless
    a build asks for it."""
    task_type = ImageTask
    default_checkpoint_dir = CHECKPOINT_DIR
    """Holds the reference labels and the config (no weights: those come from pip)."""

    def image_task(self) -> ImageTask:
        """The serving pre/post-processing, built from this family's assets."""
        return ImageTask(self.assets_dir)

    def sample_items(self, count: int) -> list[Any]:
        """Decoded held-out images, the form the task receives, for profiling."""
        return [decode_image(entry.read()) for entry in data.load_eval_index()[:count]]

    def load(self) -> nn.Module:
        """EfficientNet-Lite0 with the pip package's ImageNet weights, in eval mode.

        Raises:
            ValueError: ``config.json`` describes another architecture than the weights.
        """
        config_path = self.checkpoint_dir / "config.json"
        if config_path.exists():
            recorded = EfficientNetLiteConfig.from_dict(json.loads(config_path.read_text()))
            if recorded != EfficientNetLiteConfig.lite0():
                raise ValueError(f"{config_path} is not EfficientNet-Lite0")
        return load_pretrained()

    def reference_labels(self) -> dict[str, str]:
        """fp32 top-1 label of every eval image, by file name."""
        labels: dict[str, str] = json.loads((self.checkpoint_dir / REFERENCE_FILE).read_text())
        return labels

    def predict(self, run_graph: RunGraph, limit: int | None = None) -> dict[str, str]:
        """Top-1 label of the first ``limit`` eval images, decoded as the gateway decodes them."""
        index = data.load_eval_index()[:limit]
        images = (decode_image(entry.read()) for entry in index)
        labels = top1_labels(self.image_task(), run_graph, images)
        return {entry.file: label for entry, label in zip(index, labels, strict=True)}

    def evaluate(self, run_graph: RunGraph, limit: int | None = None) -> dict[str, float]:
        """``agreement`` with fp32 and ``top1`` on the labelled photos (percent)."""
        return self.score(self.predict(run_graph, limit), self.reference_labels())

    @staticmethod
    def score(predicted: Mapping[str, str], reference: Mapping[str, str]) -> dict[str, float]:
        """Agreement with ``reference`` and accuracy on the labelled photos among ``predicted``."""
        labelled = [e for e in data.load_eval_index() if e.accepted and e.file in predicted]
        agree = sum(label == reference[file] for file, label in predicted.items())
        correct = sum(predicted[e.file] in e.accepted for e in labelled)
        return {
            "agreement": percent(agree, len(predicted)),
            "top1": percent(correct, len(labelled)),
            "images": float(len(predicted)),
        }

    def train(self, out_dir: Path, log: Log = print) -> dict[str, float]:
        """No training (the weights are pretrained): record fp32's labels and metrics.

        Writes ``config.json``, ``reference_labels.json`` (fp32 torch top-1 per eval image)
        and ``metrics.json`` (torch and ONNX Runtime scores) to ``out_dir``.
        """
        self.load()  # checks a recorded config against the architecture
        model = load_pretrained()
        start = time.monotonic()
        reference = self.predict(self.torch_runner(model))
        log(f"fp32 labels for {len(reference)} eval images in {time.monotonic() - start:.0f}s")
        torch_metrics = self.score(reference, reference)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            self.export_onnx(model, path)
            onnx_metrics = self.score(self.predict(onnx_graph_runner(path)), reference)
        labelled = [e for e in data.load_eval_index() if e.accepted]
        for entry in labelled:
            verdict = "correct" if reference[entry.file] in entry.accepted else "WRONG"
            log(f"{entry.file}: {reference[entry.file]} ({verdict})")
        metrics = {
            **torch_metrics,
            "agreement_onnx": onnx_metrics["agreement"],
            "top1_onnx": onnx_metrics["top1"],
            "labelled_images": float(len(labelled)),
            "parameters": float(count_parameters(model)),
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(model.cfg.to_dict(), indent=1) + "\n")
        (out_dir / REFERENCE_FILE).write_text(json.dumps(reference, indent=1) + "\n")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        log(
            f"agreement {metrics['agreement']:.1f} (torch), "
            f"{metrics['agreement_onnx']:.1f} (ONNX Runtime)"
        )
        return metrics

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Export to one graph: ``images`` [B, 3, 224, 224] → ``logits`` [B, 1000]."""
        export_image_classifier(as_module(module, EfficientNetLite), path, 3, IMAGE_SIZE_PX)

    def torch_runner(self, module: nn.Module) -> RunGraph:
        """A graph runner over ``module`` with the ONNX graph's tensor names."""
        return torch_runner(module)

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """``count`` single-image batches of distillation crops and dead-leaves pictures."""
        images = calibration_images(data.load_distill_images(), count)
        return single_image_batches(self.image_task(), images, count)

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Remove ``ratio`` of every MBConv hidden width and of the head's width."""
        images = calibration_images(data.load_distill_images(), PRUNE_CALIBRATION_IMAGES)
        inputs = torch.from_numpy(self.image_task().preprocess(images))
        model = as_module(module, EfficientNetLite)
        return prune_efficientnet(model, ratio, inputs)

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Distil ``teacher`` into ``module`` on augmented distillation images.

        ``budget_s`` becomes a step count at ``RECOVER_STEPS_PER_S``: reproducible results.
        """
        # Depthwise-conv backward passes slow down by an order of magnitude when two
        # threads compete with other work for two cores; one thread is the steady choice.
        with torch_threads(RECOVERY_THREADS):
            return distill(
                as_module(module, EfficientNetLite),
                as_module(teacher, EfficientNetLite),
                data.load_distill_images(),
                self.image_task().preprocess,
                steps=round(budget_s * RECOVER_STEPS_PER_S),
            )


FAMILY = VisionFamily()
