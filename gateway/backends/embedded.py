"""ONNX Runtime sessions inside the gateway process, with bounded queues and micro-batching.

Each loaded graph has a bounded queue of graph runs and ``variant_concurrency`` worker
coroutines. A worker takes the oldest run plus every queued run with the same non-batch
shapes (up to the graph's ``max_batch_size`` rows), concatenates them, runs the session
once on a shared thread pool and splits the outputs. Batches form from what is already
waiting, so an idle variant adds no delay; ``max_batch_delay_s`` can trade a little latency
for fuller batches. A full queue answers ``CapacityExhaustedError`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from gateway.backends.base import ModelRef
from gateway.errors import BackendTimeoutError, CapacityExhaustedError, VariantUnavailableError
from gateway.routing.live import Clock
from gateway.tasks.base import Tensor

log = logging.getLogger(__name__)

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]


@dataclass
class _Run:
    inputs: dict[str, Tensor]
    rows: int
    key: BatchKey | None
    deadline_s: float | None
    future: asyncio.Future[dict[str, Tensor]]


@dataclass
class _Loaded:
    ref: ModelRef
    session: Any
    output_names: list[str]
    pending: deque[_Run] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    closing: bool = False


def batch_key(inputs: Mapping[str, Tensor]) -> tuple[int, BatchKey | None]:
    """Rows of a graph run and the key runs must share to be batched (None: never batch)."""
    arrays = list(inputs.values())
    if not arrays or any(a.ndim == 0 for a in arrays):
        return 1, None
    rows = int(arrays[0].shape[0])
    if any(int(a.shape[0]) != rows for a in arrays):
        return rows, None
    key = tuple(sorted((name, a.dtype.str, tuple(a.shape[1:])) for name, a in inputs.items()))
    return rows, key


def split_rows(
    outputs: Mapping[str, Tensor], rows: Sequence[int]
) -> list[dict[str, Tensor]] | None:
    """Split batched outputs back into per-run outputs; None if an output is not row-aligned."""
    total = sum(rows)
    if any(o.ndim == 0 or o.shape[0] != total for o in outputs.values()):
        return None
    bounds = np.cumsum([0, *rows])
    return [
        {name: o[bounds[i] : bounds[i + 1]] for name, o in outputs.items()}
        for i in range(len(rows))
    ]


class EmbeddedBackend:
    """Runs ONNX graphs in-process; implements :class:`gateway.backends.base.Backend`."""

    def __init__(
        self,
        *,
        inference_threads: int = 2,
        intra_op_threads: int = 1,
        variant_concurrency: int = 2,
        max_queue: int = 64,
        max_batch_delay_s: float = 0.0,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        clock: Clock = time.monotonic,
        on_batch: Callable[[ModelRef, int], None] | None = None,
    ) -> None:
        """Configure the backend; nothing is loaded yet.

        Args:
            inference_threads: Threads running sessions, shared by every graph.
            intra_op_threads: ONNX Runtime threads within one run (0: its default).
            variant_concurrency: Runs of one graph executing at once.
            max_queue: Runs of one graph that may wait; more are refused.
            max_batch_delay_s: Time a partial batch waits for more runs.
            providers: Execution providers, in preference order (unavailable ones skipped).
            clock: Monotonic seconds, for run deadlines.
            on_batch: Called with the rows of every session run (for batching metrics).
        """
        self._pool = ThreadPoolExecutor(inference_threads, thread_name_prefix="gateway-graph")
        self._intra_op_threads = intra_op_threads
        self._variant_concurrency = variant_concurrency
        self._max_queue = max_queue
        self._max_batch_delay_s = max_batch_delay_s
        available = set(ort.get_available_providers())
        self._providers = [p for p in providers if p in available] or ["CPUExecutionProvider"]
        self._clock = clock
        self._on_batch = on_batch
        self._models: dict[ModelRef, _Loaded] = {}

    def _open(self, ref: ModelRef) -> Any:
        options = ort.SessionOptions()
        options.intra_op_num_threads = self._intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        return ort.InferenceSession(str(ref.graph_path), options, providers=self._providers)

    async def load(self, ref: ModelRef) -> None:
        """Open a session for ``ref`` and start its workers (no-op if already loaded).

        Raises:
            VariantUnavailableError: The graph file is missing or not a valid graph.
        """
        if ref in self._models:
            return
        loop = asyncio.get_running_loop()
        try:
            session = await loop.run_in_executor(self._pool, self._open, ref)
        except Exception as exc:  # ORT raises its own types for every kind of bad graph
            raise VariantUnavailableError(
                f"{ref.model_name}: cannot load {ref.graph_path.name}: {exc}"
            ) from exc
        model = _Loaded(ref, session, [o.name for o in session.get_outputs()])
        model.workers = [
            asyncio.create_task(self._work(model), name=f"graph-{ref.model_name}-{i}")
            for i in range(self._variant_concurrency)
        ]
        self._models[ref] = model

    async def unload(self, ref: ModelRef) -> None:
        """Stop accepting runs for ``ref``; queued runs finish, then its workers exit."""
        model = self._models.pop(ref, None)
        if model is not None:
            model.closing = True
            model.wake.set()

    def is_ready(self, ref: ModelRef) -> bool:
        """Whether ``ref`` is loaded."""
        return ref in self._models

    def queue_depth(self, ref: ModelRef) -> int:
        """Runs of ``ref`` waiting for a worker."""
        model = self._models.get(ref)
        return len(model.pending) if model else 0

    async def run(
        self, ref: ModelRef, inputs: Mapping[str, Tensor], timeout_s: float | None = None
    ) -> dict[str, Tensor]:
        """Queue one graph run and wait for its outputs.

        Raises:
            VariantUnavailableError: ``ref`` is not loaded.
            CapacityExhaustedError: Its queue is full.
            BackendTimeoutError: ``timeout_s`` passed first.
        """
        model = self._models.get(ref)
        if model is None or model.closing:
            raise VariantUnavailableError(f"{ref.model_name} is not loaded")
        if len(model.pending) >= self._max_queue:
            raise CapacityExhaustedError(
                f"{ref.model_name}: queue full ({self._max_queue} graph runs waiting)"
            )
        rows, key = batch_key(inputs)
        future: asyncio.Future[dict[str, Tensor]] = asyncio.get_running_loop().create_future()
        deadline_s = None if timeout_s is None else self._clock() + timeout_s
        model.pending.append(_Run(dict(inputs), rows, key, deadline_s, future))
        model.wake.set()
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise BackendTimeoutError(
                f"{ref.model_name}: no result within {timeout_s * 1000:.0f} ms"
                if timeout_s is not None
                else f"{ref.model_name}: timed out"
            ) from None

    def _next_run(self, model: _Loaded) -> _Run | None:
        now = self._clock()
        while model.pending:
            run = model.pending.popleft()
            if run.future.done():
                continue  # its caller gave up
            if run.deadline_s is not None and now > run.deadline_s:
                run.future.set_exception(BackendTimeoutError(f"{model.ref.model_name}: expired"))
                continue
            return run
        return None

    def _fill(self, model: _Loaded, batch: list[_Run]) -> None:
        """Move queued runs compatible with ``batch[0]`` into ``batch``, oldest first."""
        limit = model.ref.max_batch_size
        first = batch[0]
        if first.key is None or limit <= 1:
            return
        rows = sum(r.rows for r in batch)
        keep: deque[_Run] = deque()
        while model.pending:
            run = model.pending.popleft()
            if run.future.done():
                continue
            if run.key == first.key and rows + run.rows <= limit:
                batch.append(run)
                rows += run.rows
            else:
                keep.append(run)
        model.pending = keep

    async def _work(self, model: _Loaded) -> None:
        while True:
            first = self._next_run(model)
            if first is None:
                if model.closing:
                    return
                model.wake.clear()
                await model.wake.wait()
                continue
            batch = [first]
            self._fill(model, batch)
            if self._max_batch_delay_s > 0 and first.key is not None:
                if sum(r.rows for r in batch) < model.ref.max_batch_size:
                    await asyncio.sleep(self._max_batch_delay_s)
                    self._fill(model, batch)
            await self._execute(model, batch)

    def _session_run(self, model: _Loaded, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self._on_batch is not None:
            rows, _ = batch_key(inputs)
            self._on_batch(model.ref, rows)
        values = model.session.run(model.output_names, dict(inputs))
        return dict(zip(model.output_names, values, strict=True))

    async def _execute(self, model: _Loaded, batch: list[_Run]) -> None:
        loop = asyncio.get_running_loop()
        if len(batch) > 1:
            names = list(batch[0].inputs)
            merged = {n: np.concatenate([r.inputs[n] for r in batch]) for n in names}
            try:
                outputs = await loop.run_in_executor(self._pool, self._session_run, model, merged)
                parts = split_rows(outputs, [r.rows for r in batch])
            except Exception:
                log.exception(
                    "%s: batched run failed; retrying runs one by one", model.ref.model_name
                )
                parts = None
            if parts is not None:
                for run, part in zip(batch, parts, strict=True):
                    if not run.future.done():
                        run.future.set_result(part)
                return
        for run in batch:
            if run.future.done():
                continue
            try:
                result = await loop.run_in_executor(
                    self._pool, self._session_run, model, run.inputs
                )
            except Exception as exc:  # reported to the one caller whose run failed
                if not run.future.done():
                    run.future.set_exception(exc)
                continue
            if not run.future.done():
                run.future.set_result(result)

    async def close(self) -> None:
        """Fail queued runs, stop every worker and the thread pool."""
        models = list(self._models.values())
        self._models.clear()
        for model in models:
            model.closing = True
            for run in model.pending:
                if not run.future.done():
                    run.future.set_exception(
                        VariantUnavailableError("the gateway is shutting down")
                    )
            model.pending.clear()
            for task in model.workers:
                task.cancel()
        for model in models:
            for task in model.workers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._pool.shutdown(wait=False, cancel_futures=True)
