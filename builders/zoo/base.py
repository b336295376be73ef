"""What the zoo families share: their checkpoint directory, serving task and input shapes.

A family subclasses :class:`FamilyBase`, names its task type and default checkpoint, and
implements the rest of :class:`~builders.zoo.api.ZooFamily` itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from builders.zoo.api import ShapeRange
from gateway.tasks.base import RunGraphs, Task

SHAPE_SAMPLES = 64
"""Calibration batches whose shapes bound a family's input shapes by default."""
M = TypeVar("M", bound=nn.Module)


class TaskType(Protocol):
    """A task class: built over an assets directory, it runs task-level items."""

    def __init__(self, assets_dir: Path) -> None: ...

    def run(self, items: list[Any], run_graph: RunGraphs) -> list[Any]:
        """Process a batch of task-level items through a graph runner."""
        ...


class FamilyBase:
    """Checkpoint directory, serving task and default input shapes of a zoo family."""

    task_type: ClassVar[type[TaskType]]
    """The serving-time task class, built over an assets directory."""
    default_checkpoint_dir: ClassVar[Path]
    """The committed checkpoint."""

    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        """Use the checkpoint in ``checkpoint_dir`` (the committed one by default)."""
        self.checkpoint_dir = checkpoint_dir or self.default_checkpoint_dir

    def make_task(self, assets_dir: Path) -> Task:
        """The serving-time task over ``assets_dir`` (a variant's copied assets)."""
        return self.task_type(assets_dir)

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """Graph inputs from the calibration split (each family defines its own)."""
        raise NotImplementedError

    def shape_ranges(self, max_batch_size: int) -> dict[str, ShapeRange]:
        """Input shapes bounded by the calibration split: 1 to ``max_batch_size`` rows.

        Other axes range between the smallest and largest the calibration batches show,
        typically the first batch's. Families whose requests may be longer than any
        calibration item (audio, text) override this with their task's limits.
        """
        seen: dict[str, list[tuple[int, ...]]] = {}
        for batch in self.calibration_inputs(SHAPE_SAMPLES):
            for name, array in batch.items():
                seen.setdefault(name, []).append(tuple(array.shape[1:]))
        ranges = {}
        for name, shapes in seen.items():
            low = tuple(int(v) for v in np.min(shapes, axis=0))
            high = tuple(int(v) for v in np.max(shapes, axis=0))
            ranges[name] = ShapeRange((1, *low), (1, *shapes[0]), (max_batch_size, *high))
        return ranges


def as_module(module: nn.Module, kind: type[M]) -> M:
    """``module`` as the family's own module type; a clear error for any other."""
    if not isinstance(module, kind):
        raise TypeError(f"expected a {kind.__name__} module, got {type(module).__name__}")
    return module


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` torch threads, restoring the previous count after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
