"""The contract between the data plane and whatever runs a variant's graph.

A backend runs tensor-level graphs only; task code (decoding, features, decode loops) stays
in the data plane, so the embedded ONNX Runtime backend and a Triton backend are
interchangeable. Everything is async so a network backend fits the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from gateway.tasks.base import Tensor


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
        gpu_memory_bytes: Device memory the variant needs (manifest), which a backend with a
            GPU-memory budget counts.
    """

    model_name: str
    graph_path: Path
    sha256: str
    max_batch_size: int
    gpu_memory_bytes: int = 0


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


@dataclass(eq=False)
class Lease:
    """A request's claim on a variant where it is resident; it is not unloaded while held.

    Attributes:
        ref: The variant the request runs on.
        holder: Where it is resident (a server's address), or "" for a fallback backend.
    """

    ref: ModelRef
    holder: str


@runtime_checkable
class PlacingBackend(Backend, Protocol):
    """A backend that decides itself which variants are resident.

    E.g. Triton servers within a GPU-memory budget: the data plane reports demand and runs
    requests under leases. ``load`` makes a variant *servable* (known, loadable); whether
    it is *resident* now is the backend's choice, driven by ``note_demand``.
    """

    def can_hold(self, ref: ModelRef) -> bool:
        """Whether ``ref`` could ever be resident (it fits a server's budget, or a fallback)."""
        ...

    def is_serving(self) -> bool:
        """Whether anything can run requests now (a healthy server or a fallback)."""
        ...

    def note_demand(self, ref: ModelRef) -> None:
        """A request would run best on ``ref``; the backend may load it (in the background)."""
        ...

    async def acquire(self, refs: Sequence[ModelRef], timeout_s: float) -> Lease:
        """Lease the first of ``refs`` (best first) that is resident.

        If none is, waits up to ``timeout_s`` seconds for one to load.

        Raises:
            BackendTimeoutError: None became resident in time.
            VariantUnavailableError: None can become resident (no server, failed loads).
        """
        ...

    def release(self, lease: Lease) -> None:
        """End a lease taken by :meth:`acquire`."""
        ...

    async def run_leased(
        self, lease: Lease, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Like ``run``, preferring the lease's holder (and failing over as ``run`` does)."""
        ...
