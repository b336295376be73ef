"""The contract between the data plane and whatever runs a variant's graph.

A backend runs tensor-level graphs only; task code (decoding, features, decode loops) stays
in the data plane, so the embedded ONNX Runtime backend and a Triton backend are
interchangeable. A request runs under a *lease* on a variant where it is resident: the
embedded backend holds every loaded variant and leases at once; a Triton backend with a
GPU-memory budget decides residency itself and may make a request wait for a load.

Graphs run from the data plane's worker threads through :meth:`Backend.graph_runner`: the
embedded backend calls its session directly in that thread, a network backend hands the
call to its event loop and waits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from gateway.errors import BackendTimeoutError
from gateway.tasks.base import MAIN_GRAPH, Tensor


class GraphRunner(Protocol):
    """Runs one of a leased variant's graphs once, from a worker thread."""

    def __call__(
        self, inputs: Mapping[str, Tensor], timeout_s: float | None, graph: str = MAIN_GRAPH
    ) -> Mapping[str, Tensor]:
        """Run ``graph`` on ``inputs`` within ``timeout_s``; returns its outputs."""
        ...


@dataclass(frozen=True)
class GraphFile:
    """One graph of a multi-graph variant: its name, Triton model, file and hash."""

    name: str
    """Graph name the task calls (``encoder``)."""
    model_name: str
    """Its own Triton model, ``family__variant__graph``."""
    path: Path
    sha256: str


@dataclass(frozen=True)
class ModelRef:
    """One loadable variant: its graph (or graphs) at one content hash.

    Two refs with the same name but different hashes are different loads, so a rebuilt
    variant can load beside the old one and the switch is a single reference swap.

    Attributes:
        model_name: Triton model name, ``family__variant``.
        graph_path: The graph file (``<repo>/<model_name>/1/model.onnx``).
        sha256: Content hash of the graph file, from the manifest.
        max_batch_size: Rows one graph run may take; 0 disables batching across requests.
        gpu_memory_bytes: Device memory the variant needs (manifest), which a backend with a
            GPU-memory budget counts.
        graphs: Every graph of a multi-graph variant, loaded, placed and unloaded together
            (empty for a one-graph variant, whose graph is ``graph_path``).
    """

    model_name: str
    graph_path: Path
    sha256: str
    max_batch_size: int
    gpu_memory_bytes: int = 0
    graphs: tuple[GraphFile, ...] = ()

    def graph_files(self) -> tuple[GraphFile, ...]:
        """Every graph of the variant (the one graph is named ``model``)."""
        if self.graphs:
            return self.graphs
        return (GraphFile(MAIN_GRAPH, self.model_name, self.graph_path, self.sha256),)

    def graph_file(self, graph: str) -> GraphFile:
        """The graph called ``graph``.

        Raises:
            KeyError: The variant has no such graph.
        """
        for file in self.graph_files():
            if file.name == graph:
                return file
        names = ", ".join(f.name for f in self.graph_files())
        raise KeyError(f"{self.model_name} has no graph {graph!r} (it has {names})")


@dataclass(eq=False)
class Lease:
    """A request's claim on a variant where it is resident; it is not unloaded while held.

    Attributes:
        ref: The variant the request runs on.
        holder: Where it is resident (a server's address), or "" for an in-process backend.
    """

    ref: ModelRef
    holder: str


@runtime_checkable
class Backend(Protocol):
    """Loads graphs, leases them to requests and runs them on named tensors.

    Implementations raise the gateway's errors: ``CapacityExhaustedError`` when a queue is
    full, ``BackendTimeoutError`` when ``timeout_s`` passes, ``VariantUnavailableError``
    for a ref that is not loaded. Anything else is a bug surfacing as INTERNAL.
    """

    runs_in_caller: bool
    """Whether graph runners compute in the calling thread (so a cheap task may run on the
    event loop itself); False when they hand each call to the event loop."""

    async def start(self) -> None:
        """Connect to whatever runs the graphs (on the loop that will use the backend)."""
        ...

    async def load(self, ref: ModelRef) -> None:
        """Make ``ref`` servable; raises ``VariantUnavailableError`` if it cannot load."""
        ...

    async def unload(self, ref: ModelRef) -> None:
        """Release ``ref``; graph runs already started still finish."""
        ...

    def is_ready(self, ref: ModelRef) -> bool:
        """Whether ``ref`` is loaded and accepting runs."""
        ...

    def is_serving(self) -> bool:
        """Whether anything can run requests now."""
        ...

    def queue_depth(self, ref: ModelRef) -> int:
        """Graph runs of ``ref`` waiting inside the backend (e.g. a Triton server's queue)."""
        ...

    def can_hold(self, ref: ModelRef) -> bool:
        """Whether ``ref`` could ever be resident (e.g. it fits a server's memory budget)."""
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

    def graph_runner(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> GraphRunner:
        """A callable running the lease's graph from a worker thread (``loop`` serves it)."""
        ...

    async def run(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Tensor],
        timeout_s: float | None = None,
        graph: str = MAIN_GRAPH,
    ) -> dict[str, Tensor]:
        """Run ``graph`` once on ``inputs`` (batch dimension first) from the event loop."""
        ...

    async def close(self) -> None:
        """Unload everything and stop background work."""
        ...


def loop_runner(
    run_leased: Callable[
        [Lease, Mapping[str, Tensor], float | None, str],
        Coroutine[Any, Any, dict[str, Tensor]],
    ],
    lease: Lease,
    loop: asyncio.AbstractEventLoop,
) -> GraphRunner:
    """A ``GraphRunner`` for a backend whose runs are coroutines on ``loop``.

    The worker thread hands each call to the loop and blocks until it answers; the backend
    enforces ``timeout_s`` itself, the margin here only guards a lost reply.
    """

    def run(
        inputs: Mapping[str, Tensor], timeout_s: float | None, graph: str = MAIN_GRAPH
    ) -> Mapping[str, Tensor]:
        call = run_leased(lease, inputs, timeout_s, graph)
        future = asyncio.run_coroutine_threadsafe(call, loop)
        try:
            result: Mapping[str, Tensor] = future.result(
                None if timeout_s is None else timeout_s + 1.0
            )
        except TimeoutError:
            future.cancel()
            raise BackendTimeoutError(f"{lease.ref.model_name}: no answer in time") from None
        return result

    return run
