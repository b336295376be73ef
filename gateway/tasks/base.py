"""The contract between a task's pre/post-processing and whatever runs its graph."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[Any]
"""A named input or output tensor of a variant's graph."""

DEFAULT_GRAPH = "model"
"""The graph name of a single-graph variant."""


class RunGraph(Protocol):
    """Runs one graph of a variant: named input tensors in, named output tensors out.

    ``graph`` names the graph for variants of several graphs (Whisper's ``encoder`` and
    ``decoder``); single-graph variants have one, ``"model"``. The embedded ONNX Runtime
    backend and the Triton backend each provide one, so the task code never knows which
    runtime served it.
    """

    def __call__(
        self, inputs: Mapping[str, Tensor], graph: str = DEFAULT_GRAPH
    ) -> Mapping[str, Tensor]:
        """Run ``graph`` on ``inputs``; returns its outputs by name."""
        ...


class Task(Protocol):
    """Task-level I/O for one family: items in, results out, through a graph runner."""

    def run(self, items: list[Any], run_graph: RunGraph) -> list[Any]:
        """Process a batch of task-level items (images, waveforms, texts) into results."""
        ...


def pad_stack(arrays: list[Tensor], pad_value: float | int = 0) -> Tensor:
    """Stack arrays of equal rank, right-padding every axis to the longest along it."""
    if not arrays:
        raise ValueError("pad_stack needs at least one array")
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    out = np.full((len(arrays), *shape), pad_value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, n) for n in a.shape))] = a
    return out


class TaskInputError(ValueError):
    """A task-level input that cannot be processed; the message says what was wrong.

    The gateway answers it with INVALID_ARGUMENT / HTTP 400.
    """
