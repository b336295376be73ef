"""What each zoo family provides to the zoo CLI and to the variant builder."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from torch import nn

from gateway.tasks.base import RunGraph, RunGraphs, Task


@dataclass(frozen=True)
class ShapeRange:
    """Shapes one graph input takes, batch dimension first: the smallest, typical and largest.

    The largest is what GPU memory is estimated at; TensorRT's optimisation profile covers
    the range and tunes its kernels for the typical shape.
    """

    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def __post_init__(self) -> None:
        if not len(self.min) == len(self.opt) == len(self.max):
            raise ValueError(f"min, opt and max must have one rank: {self}")
        if any(not 1 <= a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ValueError(f"need 1 <= min <= opt <= max on every axis: {self}")


@dataclass(frozen=True)
class MetricSpec:
    """The task metric that decides whether a variant is good enough."""

    name: str
    """Key in the metrics dict, e.g. ``"wer"``, ``"bleu"``, ``"agreement"``."""
    higher_is_better: bool
    """True for accuracy-like metrics, False for error rates such as WER."""
    scale: float = 100.0
    """Points per unit: metrics are reported in percent-like points (0..100)."""


class ZooFamily(Protocol):
    """A trained source model with its data, metric, export and structured pruning."""

    name: str
    """Family name, e.g. ``"speech"``."""
    task: str
    """Task kind: ``"image-labels"``, ``"audio-text"`` or ``"text-text"``."""
    metric: MetricSpec
    """The family's primary metric."""
    assets_dir: Path
    """Files the task code needs at serving time (labels, tokenizer, feature settings)."""
    recover_budget_s: float
    """Default recovery fine-tune per pruned model, in seconds of a 2-core CPU: what this
    family needs for its pruned models to keep their quality (see :meth:`recover`)."""

    def make_task(self, assets_dir: Path) -> Task:
        """The serving-time task object over a (copied) assets directory."""
        ...

    def sample_items(self, count: int) -> list[Any]:
        """Task-level items (images, waveforms, texts) from the held-out set, for profiling."""
        ...

    def load(self) -> nn.Module:
        """Load the committed checkpoint into a torch module in eval mode."""
        ...

    def train(self, out_dir: Path) -> dict[str, float]:
        """Run the seeded training recipe, write checkpoint + metrics.json to out_dir."""
        ...

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Export a module of this family (full or pruned) to one ONNX graph at path."""
        ...

    def evaluate(self, run_graph: RunGraphs, limit: int | None = None) -> dict[str, float]:
        """Score a graph runner on the committed held-out set with the task's metrics."""
        ...

    def torch_runner(self, module: nn.Module) -> RunGraph:
        """A graph runner over a torch module, same tensors as the ONNX graph."""
        ...

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """Graph inputs from the calibration split, for static int8 quantization."""
        ...

    def shape_ranges(self, max_batch_size: int) -> dict[str, ShapeRange]:
        """Per graph input, the shapes requests give it, up to ``max_batch_size`` rows."""
        ...

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Structurally prune ``ratio`` of the prunable units; returns a smaller module."""
        ...

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Short recovery fine-tune of a pruned module (distillation allowed).

        ``budget_s`` is seconds of a 2-core CPU, which the family turns into a fixed step
        count, so the same budget gives the same module on any machine.
        """
        ...


def example_inputs_float(shape: tuple[int, ...], seed: int = 0) -> npt.NDArray[np.float32]:
    """Deterministic random float32 inputs, for smoke checks of exported graphs."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
