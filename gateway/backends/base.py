"""The contract between the data plane and whatever runs a variant's graph.

A backend runs tensor-level graphs only; task code (decoding, features, decode loops) stays
in the data plane, so the embedded ONNX Runtime backend and a Triton backend are
interchangeable. Everything is async so a network backend fits the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.tasks.base import Tensor

GRAPH_FILES = {"onnx": "model.onnx", "tensorrt": "model.plan"}
"""Graph file name in a version directory, per manifest ``runtime``."""


@dataclass(frozen=True)
class ModelRef:
    """One loadable graph: a variant's model at one content hash.

    Two refs with the same name but different hashes are different loads, so a rebuilt
    variant can load beside the old one and the switch is a single reference swap.

    Attributes:
        model_name: Triton model name, ``family__variant``.
        graph_path: The graph file (``<repo>/<model_name>/1/model.onnx``).
        sha256: Content hash of the graph file, from the manifest.
        max_batch_size: Rows one graph run may take; 0 disables batching across requests.
    """

    model_name: str
    graph_path: Path
    sha256: str
    max_batch_size: int


class Backend(Protocol):
    """Loads graphs and runs them on named tensors.

    Implementations raise the gateway's errors: ``CapacityExhaustedError`` when a queue is
    full, ``BackendTimeoutError`` when ``timeout_s`` passes, ``VariantUnavailableError``
    for a ref that is not loaded. Anything else is a bug surfacing as INTERNAL.
    """

    async def load(self, ref: ModelRef) -> None:
        """Make ``ref`` runnable; raises ``VariantUnavailableError`` if it cannot load."""
        ...

    async def unload(self, ref: ModelRef) -> None:
        """Release ``ref``; graph runs already queued still finish."""
        ...

    def is_ready(self, ref: ModelRef) -> bool:
        """Whether ``ref`` is loaded and accepting runs."""
        ...

    def queue_depth(self, ref: ModelRef) -> int:
        """Graph runs of ``ref`` waiting to execute (not counting those executing)."""
        ...

    async def run(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Run the graph once on ``inputs`` (batch dimension first); returns its outputs."""
        ...

    async def close(self) -> None:
        """Unload everything and stop worker threads."""
        ...
