"""Pieces shared by the image → labels families (``vision`` and ``digits``).

Both serve one graph ``images`` FP32 [B, C, S, S] → ``logits`` FP32 [B, classes] behind
:class:`gateway.tasks.vision.ImageTask`; these helpers export, run and score such graphs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from gateway.tasks.base import RunGraph, Tensor
from gateway.tasks.vision import ImageTask, UInt8Image

ONNX_OPSET = 17
EVAL_BATCH = 16
"""Images per graph call when scoring; a typical serving batch."""


def export_image_classifier(module: nn.Module, path: Path, channels: int, size_px: int) -> None:
    """Export to one self-contained ONNX graph ``images`` [B,C,S,S] → ``logits`` [B,classes].

    The TorchScript exporter writes the weights into the single ``.onnx`` file; the batch
    axis is dynamic.
    """
    module = module.eval()
    example = torch.zeros(2, channels, size_px, size_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    onnx.checker.check_model(str(path))


def torch_runner(module: nn.Module) -> RunGraph:
    """A graph runner over a classifier module with the ONNX graph's tensor names."""
    module.eval()

    def run(inputs: Mapping[str, Tensor]) -> Mapping[str, Tensor]:
        images = torch.from_numpy(np.ascontiguousarray(inputs["images"], dtype=np.float32))
        with torch.inference_mode():
            logits = module(images)
        return {"logits": logits.numpy()}

    return run


def top1_labels(
    task: ImageTask,
    run_graph: RunGraph,
    images: Sequence[UInt8Image] | Iterator[UInt8Image],
    batch_size: int = EVAL_BATCH,
) -> list[str]:
    """Top-1 label of every image, running the task in batches as the gateway would."""
    labels: list[str] = []
    batch: list[UInt8Image] = []
    for image in images:
        batch.append(image)
        if len(batch) == batch_size:
            labels += [result[0][0] for result in task.run(batch, run_graph, top_k=1)]
            batch = []
    if batch:
        labels += [result[0][0] for result in task.run(batch, run_graph, top_k=1)]
    return labels


def percent(hits: int, total: int) -> float:
    """``hits / total`` in percent points; 0 for an empty set."""
    return 100.0 * hits / total if total else 0.0


def single_image_batches(
    task: ImageTask, images: Sequence[UInt8Image], count: int
) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
    """Graph inputs of batch 1 for the first ``count`` images (calibration for int8)."""
    for image in images[:count]:
        yield {task.settings.input_name: task.preprocess([image])}


Log = Callable[[str], None]
"""Where recipes write their progress lines (``print`` by default)."""
