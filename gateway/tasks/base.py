"""The contract between a task's pre/post-processing and whatever runs its graph."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Tensor = npt.NDArray[Any]
"""A named input or output tensor of a variant's graph."""

RunGraph = Callable[[Mapping[str, Tensor]], Mapping[str, Tensor]]
"""Runs a variant's one graph: named input tensors in, named output tensors out.

The embedded ONNX Runtime backend and the Triton backend each provide one, so the task code
never knows which runtime served it.
"""

MAIN_GRAPH = "model"
"""The name of a variant's graph when it has only one (``gateway.layout`` re-exports it)."""


class RunGraphs(Protocol):
    """Runs one of a variant's named graphs; a :data:`RunGraph` for tasks with one graph.

    What the data plane hands every task: single-graph tasks call it with the inputs only,
    tasks whose variants have several graphs (an encoder and a decoder step) name them.
    """

    def __call__(
        self, inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
    ) -> Mapping[str, Tensor]:
        """Run ``graph`` once on ``inputs``."""
        ...


def single_graph(run_graph: RunGraph) -> RunGraphs:
    """A :class:`RunGraphs` over the one graph of a single-graph variant."""

    def run(inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH) -> Mapping[str, Tensor]:
        if graph != MAIN_GRAPH:
            raise KeyError(f"this variant has one graph, {MAIN_GRAPH!r}, not {graph!r}")
        return run_graph(inputs)

    return run


class Task(Protocol):
    """Task-level I/O for one family: items in, results out, through a graph runner."""

    def run(self, items: list[Any], run_graph: RunGraphs) -> list[Any]:
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
