"""ONNX Runtime sessions inside the gateway process.

Every loaded variant is resident, so a lease is granted at once. Graphs run in the data
plane's worker threads: :meth:`EmbeddedBackend.graph_runner` calls the session directly in
the calling thread (ONNX Runtime releases the GIL while it computes), so a request's task
code and its graph calls never leave the worker that took it. Queueing and batching happen
before that, in the data plane's task pool, where admission can see them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnxruntime as ort

from gateway.backends.base import GraphRunner, Lease, ModelRef
from gateway.errors import BackendTimeoutError, VariantUnavailableError
from gateway.tasks.base import MAIN_GRAPH, Tensor


class _Session:
    """One graph's session and its output names, resolved once at load."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.output_names: list[str] = [o.name for o in session.get_outputs()]

    def run(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        values = self.session.run(self.output_names, dict(inputs))
        return dict(zip(self.output_names, values, strict=True))


class EmbeddedBackend:
    """Runs ONNX graphs in-process; implements :class:`gateway.backends.base.Backend`."""

    runs_in_caller = True
    """Graphs run in the thread that calls the runner, the event loop's included."""

    def __init__(
        self,
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        on_batch: Callable[[ModelRef, int], None] | None = None,
    ) -> None:
        """Configure the backend; nothing is loaded yet.

        Args:
            intra_op_threads: ONNX Runtime threads within one run (0: its default).
            providers: Execution providers, in preference order (unavailable ones skipped).
            on_batch: Called with the rows of every session run (for batching metrics).
        """
        self._intra_op_threads = intra_op_threads
        available = set(ort.get_available_providers())
        self._providers = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self._on_batch = on_batch
        self._sessions: dict[ModelRef, dict[str, _Session]] = {}
        """Every loaded variant's sessions, by graph name."""

    def _open(self, path: Path) -> _Session:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return _Session(ort.InferenceSession(str(path), options, providers=self._providers))

    def _open_all(self, ref: ModelRef) -> dict[str, _Session]:
        """Sessions of every graph of ``ref``: all of them or, on any failure, none."""
        return {g.name: self._open(g.path) for g in ref.graph_files()}

    async def start(self) -> None:
        """Nothing to connect to."""

    async def load(self, ref: ModelRef) -> None:
        """Open a session for every graph of ``ref`` (no-op if already loaded).

        A variant of several graphs is loaded whole or not at all.

        Raises:
            VariantUnavailableError: A graph file is missing or not a valid graph.
        """
        if ref in self._sessions:
            return
        try:
            sessions = await asyncio.to_thread(self._open_all, ref)
        except Exception as exc:  # ORT raises its own types for every kind of bad graph
            raise VariantUnavailableError(
                f"{ref.model_name}: cannot load {ref.graph_path.name}: {exc}"
            ) from exc
        self._sessions[ref] = sessions

    async def unload(self, ref: ModelRef) -> None:
        """Forget ``ref``'s session; runs already holding it finish."""
        self._sessions.pop(ref, None)

    def is_ready(self, ref: ModelRef) -> bool:
        """Whether ``ref`` is loaded."""
        return ref in self._sessions

    def is_serving(self) -> bool:
        """Always: every loaded variant runs here."""
        return True

    def queue_depth(self, ref: ModelRef) -> int:
        """Nothing waits inside this backend (the task pool holds the queue)."""
        return 0

    def can_hold(self, ref: ModelRef) -> bool:
        """Any variant can be held."""
        return True

    def note_demand(self, ref: ModelRef) -> None:
        """Every variant is loaded already; demand changes nothing."""

    async def acquire(self, refs: Sequence[ModelRef], timeout_s: float) -> Lease:
        """Lease the first loaded ref at once.

        Raises:
            VariantUnavailableError: None of ``refs`` is loaded.
        """
        for ref in refs:
            if ref in self._sessions:
                return Lease(ref, "")
        names = ", ".join(r.model_name for r in refs)
        raise VariantUnavailableError(f"{names} not loaded")

    def release(self, lease: Lease) -> None:
        """Nothing to release."""

    def _graphs(self, ref: ModelRef) -> dict[str, _Session]:
        sessions = self._sessions.get(ref)
        if sessions is None:
            raise VariantUnavailableError(f"{ref.model_name} is not loaded")
        return sessions

    @staticmethod
    def _pick(ref: ModelRef, sessions: Mapping[str, _Session], graph: str) -> _Session:
        session = sessions.get(graph)
        if session is None:
            raise KeyError(f"{ref.model_name} has no graph {graph!r} ({', '.join(sessions)})")
        return session

    def graph_runner(self, lease: Lease, loop: asyncio.AbstractEventLoop) -> GraphRunner:
        """Run the lease's session in the calling thread.

        The session is resolved now, so a variant unloaded by a reload still finishes the
        requests that hold it.
        """
        sessions = self._graphs(lease.ref)
        ref, on_batch, pick = lease.ref, self._on_batch, self._pick

        def run(
            inputs: Mapping[str, Tensor], timeout_s: float | None, graph: str = MAIN_GRAPH
        ) -> Mapping[str, Tensor]:
            if timeout_s is not None and timeout_s <= 0:
                raise BackendTimeoutError(f"{ref.model_name}: the request's deadline passed")
            session = pick(ref, sessions, graph)
            if on_batch is not None:
                first = next(iter(inputs.values()), None)
                on_batch(ref, int(first.shape[0]) if first is not None and first.ndim else 1)
            return session.run(inputs)

        return run

    async def run(
        self,
        ref: ModelRef,
        inputs: Mapping[str, Tensor],
        timeout_s: float | None = None,
        graph: str = MAIN_GRAPH,
    ) -> dict[str, Tensor]:
        """Run ``graph`` once on a thread (for callers on the event loop, e.g. a fallback).

        Raises:
            VariantUnavailableError: ``ref`` is not loaded.
            BackendTimeoutError: ``timeout_s`` passed first.
        """
        session = self._pick(ref, self._graphs(ref), graph)
        try:
            return await asyncio.wait_for(asyncio.to_thread(session.run, inputs), timeout_s)
        except TimeoutError:
            raise BackendTimeoutError(
                f"{ref.model_name}: no result within {(timeout_s or 0) * 1000:.0f} ms"
            ) from None

    async def close(self) -> None:
        """Forget every session."""
        self._sessions.clear()
