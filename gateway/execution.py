"""Where requests' task code runs: worker threads over one earliest-deadline-first queue.

A *job* is one request's task-level work on one variant (decoding, features, every graph
call, post-processing). The event loop submits it and awaits its future; a worker thread
takes the job due first plus every queued job that may share a task run with it (same
key: same variant, lease and options; up to the graph's batch limit), runs the task once
on all their items and hands the results back with one wake-up of the loop. So a request
crosses threads twice (loop → worker → loop) whatever its task, and batches form from what
is already waiting, never by holding a request back.

Jobs run in order of their due time (their latency budget's end, else their deadline), so a
request with a tight budget is not stuck behind unbudgeted heavy work; with one budget for
all, that is arrival order. The pool is the unit of shared compute that admission reasons
about: it knows the predicted service seconds of everything queued and running, so the
data plane can predict when a new job would start (:meth:`TaskPool.stats`). A job with a
hard deadline that can no longer finish in time when a worker reaches it is dropped unrun.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import BackendTimeoutError, VariantUnavailableError
from gateway.routing.live import Clock

log = logging.getLogger(__name__)

TaskRun = Callable[[list[Any]], list[Any]]
"""Runs a task on items (in a worker thread) and returns one result per item."""


@dataclass(eq=False)
class Job:
    """One request's task work, as the pool sees it.

    Attributes:
        key: Jobs with equal keys may share one task run (same variant, lease, options).
        items: Task-level items; results come back in the same order.
        run: Runs the task on a list of items; every job with this key runs the same way.
        cost_s: Predicted (median) service seconds of this job alone, for the work ahead.
        tail_s: Predicted tail (p95) service seconds: while it runs, when its thread is
            counted free again (a run near its end is where lateness comes from).
        max_rows: Most items one task run may take (the graph's batch limit, at least 1).
        due_s: Clock time the answer is due; jobs due first run first.
        start_by_s: Latest clock time the job may start and still finish within its budget;
            None runs it whenever it is reached (a soft budget, or none).
        future: Resolved on the event loop with the results or the error.
        loop: The loop that awaits ``future``.
        label: What the job is counted under in :meth:`TaskPool.queued` (its variant).
        size: The items' total size (the family's size unit), for service-time learning.
        observe: Told ``(rows, size, seconds, concurrency)`` of each task run the job led,
            from the worker (concurrency: runs executing when it started, itself included).
        run_tail_s: Predicted tail seconds of a run of ``rows`` items of total ``size`` of
            this key; a job joins a batch only if the batch still ends before every hard
            member's due time. None: batches are bounded by ``max_rows`` alone.
    """

    key: Hashable
    items: list[Any]
    run: TaskRun
    cost_s: float
    max_rows: int
    due_s: float
    start_by_s: float | None
    future: asyncio.Future[list[Any]]
    loop: asyncio.AbstractEventLoop
    label: str = ""
    size: float | None = None
    observe: Callable[[int, float | None, float, int], None] | None = None
    run_tail_s: Callable[[int, float | None], float] | None = None
    tail_s: float | None = None
    abandoned: bool = False
    """Set on the loop when nobody waits for the result any more (timeout, cancellation)."""


@dataclass
class _Running:
    tail_s: float
    started_s: float


Outcome = tuple[Job, list[Any] | None, BaseException | None]


@dataclass
class PoolStats:
    """What the pool holds right now.

    Attributes:
        queued: Jobs waiting for a worker.
        running: Task runs executing.
        work_ahead_s: Predicted seconds of work queued ahead plus the rest of what is
            running (to its tail), summed over jobs.
        wait_s: Predicted seconds before a new job starts: the work ahead laid out on the
            threads, each taking the next job as it frees up.
        threads: Worker threads.
        concurrency_next: Runs executing once a new job starts, itself included.
    """

    queued: int = 0
    running: int = 0
    work_ahead_s: float = 0.0
    wait_s: float = 0.0
    threads: int = 1
    concurrency_next: int = 1


@dataclass
class _Queue:
    """Jobs sorted by (due time, arrival); ``order`` holds those keys for bisection."""

    jobs: list[Job] = field(default_factory=list)
    order: list[tuple[float, int]] = field(default_factory=list)

    def add(self, job: Job, seq: int) -> None:
        at = bisect.bisect(self.order, (job.due_s, seq))
        self.order.insert(at, (job.due_s, seq))
        self.jobs.insert(at, job)

    def pop(self, index: int) -> Job:
        del self.order[index]
        return self.jobs.pop(index)

    def due_by(self, due_s: float) -> list[Job]:
        """The queued jobs (still wanted) due no later than ``due_s``, due first."""
        end = bisect.bisect(self.order, (due_s, -1))
        return [job for job in self.jobs[:end] if not job.abandoned]


class TaskPool:
    """Worker threads running jobs in arrival order, batching jobs that share a key."""

    def __init__(
        self,
        name: str,
        threads: int,
        *,
        max_queue: int,
        clock: Clock,
        on_queue: Callable[[str, int], None] | None = None,
    ) -> None:
        """Start ``threads`` workers.

        Args:
            name: For thread names and messages.
            threads: Workers, i.e. task runs executing at once.
            max_queue: Jobs that may wait; :meth:`submit` refuses more.
            clock: Monotonic seconds (deadlines, the work-ahead estimate).
            on_queue: Told ``(label, +1 or -1)`` as jobs enter and leave the queue, under
                the pool's lock (so its counts have one writer at a time).
        """
        self.name = name
        self.threads = threads
        self.max_queue = max_queue
        self._clock = clock
        self._on_queue = on_queue
        self._cond = threading.Condition()
        self._queue = _Queue()
        self._seq = itertools.count()
        self._running: dict[int, _Running] = {}
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True)
            for i in range(threads)
        ]
        for worker in self._workers:
            worker.start()

    # -- the loop's side -----------------------------------------------------------------

    def submit(self, job: Job) -> bool:
        """Queue ``job``; False when the queue is full or the pool is closed (not queued)."""
        with self._cond:
            if self._closed or len(self._queue.jobs) >= self.max_queue:
                return False
            self._queue.add(job, next(self._seq))
            self._counted(job, 1)
            self._cond.notify()
        return True

    def _counted(self, job: Job, delta: int) -> None:
        if self._on_queue is not None:
            self._on_queue(job.label, delta)

    def has_queue(self) -> bool:
        """Whether any job waits for a worker."""
        return bool(self._queue.jobs)

    def queued(self, label: str) -> int:
        """Jobs labelled ``label`` waiting for a worker."""
        with self._cond:
            return sum(1 for job in self._queue.jobs if job.label == label)

    def stats(self, due_s: float = float("inf")) -> PoolStats:
        """Queue length, runs executing and the predicted work ahead of a job due at ``due_s``.

        Work ahead is the rest of what is running plus what is queued and due no later.
        """
        now = self._clock()
        with self._cond:
            remaining = [_remaining_s(r.tail_s, now - r.started_s) for r in self._running.values()]
            ahead = [job.cost_s for job in self._queue.due_by(due_s)]
            queued = len(self._queue.jobs)
        return PoolStats(
            queued=queued,
            running=len(remaining),
            work_ahead_s=sum(remaining) + sum(ahead),
            wait_s=predicted_wait_s(remaining, ahead, self.threads),
            threads=self.threads,
            concurrency_next=min(self.threads, len(remaining) + len(ahead) + 1),
        )

    def close(self) -> None:
        """Refuse new jobs, fail queued ones (UNAVAILABLE); running ones finish."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue.jobs)
            for job in dropped:
                self._counted(job, -1)
            self._queue = _Queue()
            self._cond.notify_all()
        _deliver_all(
            [
                (job, None, VariantUnavailableError("the gateway is shutting down"))
                for job in dropped
            ]
        )

    # -- the workers' side ---------------------------------------------------------------

    def _take(self, now_s: float) -> tuple[list[Job], list[Outcome]]:
        """Pop the job due first and the queued jobs that may join its run."""
        queue = self._queue
        dropped: list[Outcome] = []
        while queue.jobs:
            first = queue.pop(0)
            self._counted(first, -1)
            if first.abandoned:
                continue
            if _is_late(first, now_s):
                dropped.append((first, None, _late(first, now_s)))
                continue
            batch = [first]
            rows, size = len(first.items), first.size
            due_s = first.due_s if first.start_by_s is not None else float("inf")
            i = 0
            while rows < first.max_rows and i < len(queue.jobs):
                job = queue.jobs[i]
                joined_rows = rows + len(job.items)
                joined_size = None if size is None or job.size is None else size + job.size
                joined_due = min(due_s, job.due_s if job.start_by_s is not None else due_s)
                fits = (
                    job.key == first.key
                    and joined_rows <= first.max_rows
                    and not job.abandoned
                    and not _is_late(job, now_s)
                    and _ends_by(first, joined_rows, joined_size, now_s, joined_due)
                )
                if fits:
                    batch.append(queue.pop(i))
                    self._counted(job, -1)
                    rows, size, due_s = joined_rows, joined_size, joined_due
                else:
                    i += 1
            return batch, dropped
        return [], dropped

    def _work(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._cond:
                while not self._queue.jobs and not self._closed:
                    self._cond.wait()
                if self._closed and not self._queue.jobs:
                    return
                now_s = self._clock()
                batch, dropped = self._take(now_s)
                if batch:
                    self._running[ident] = _Running(_batch_tail_s(batch), now_s)
                    concurrency = len(self._running)
            _deliver_all(dropped)
            if not batch:
                continue
            try:
                outcomes, seconds = self._execute(batch)
            finally:
                with self._cond:
                    self._running.pop(ident, None)
            if seconds is not None and batch[0].observe is not None:
                rows = sum(len(job.items) for job in batch)
                sizes = [job.size for job in batch]
                size = None if None in sizes else sum(s for s in sizes if s is not None)
                try:
                    batch[0].observe(rows, size, seconds, concurrency)
                except Exception:  # statistics must never lose an answer
                    log.exception("%s: recording a service time failed", self.name)
            _deliver_all(outcomes)

    def _execute(self, batch: list[Job]) -> tuple[list[Outcome], float | None]:
        """Run a batch: one task run for all its items, one by one if that fails."""
        start_s = self._clock()
        first = batch[0]
        if len(batch) == 1:
            try:
                results = _run_chunked(first.items, first.run, first.max_rows)
            except Exception as exc:  # reported to the one caller, mapped by the data plane
                return [(first, None, exc)], None
            return [(first, results, None)], self._clock() - start_s
        items = [item for job in batch for item in job.items]
        try:
            results = first.run(items)
            if len(results) != len(items):
                raise RuntimeError(f"task returned {len(results)} results for {len(items)} items")
        except Exception:
            # One request's bad item must not fail the others: each runs alone now.
            outcomes: list[Outcome] = []
            for job in batch:
                try:
                    outcomes.append((job, _run_chunked(job.items, job.run, job.max_rows), None))
                except Exception as exc:
                    outcomes.append((job, None, exc))
            return outcomes, None
        seconds = self._clock() - start_s
        out: list[Outcome] = []
        offset = 0
        for job in batch:
            out.append((job, results[offset : offset + len(job.items)], None))
            offset += len(job.items)
        return out, seconds


def _remaining_s(tail_s: float, elapsed_s: float) -> float:
    """Predicted seconds left of a run predicted to end by ``tail_s``, ``elapsed_s`` in.

    A run past its tail is one the prediction got wrong (a translation may run on to its
    output cap): it is predicted to overrun by as much again, so its thread counts as busy
    instead of free, and the longer it overruns the longer it is taken to last.
    """
    return tail_s - elapsed_s if elapsed_s <= tail_s else elapsed_s - tail_s


def predicted_wait_s(remaining_s: list[float], ahead_s: list[float], threads: int) -> float:
    """When a new job starts: the work ahead laid out on ``threads`` workers.

    Args:
        remaining_s: Predicted seconds left of each run executing now.
        ahead_s: Predicted seconds of each queued job that runs first, in order.
        threads: Worker threads.

    Each queued job takes the thread that frees up first; the new job takes the next one.
    """
    free = sorted([*remaining_s, *[0.0] * max(0, threads - len(remaining_s))])
    if not free:
        return 0.0
    for cost_s in ahead_s:
        heapq.heapreplace(free, free[0] + cost_s)
    return free[0]


def run_inline(
    items: list[Any],
    run: TaskRun,
    max_rows: int,
    size: float | None,
    observe: Callable[[int, float | None, float, int], None] | None,
    clock: Clock,
) -> list[Any]:
    """Run a request's task in the calling thread, reporting its time as a worker would."""
    start_s = clock()
    results = _run_chunked(items, run, max_rows)
    if observe is not None:
        observe(len(items), size, clock() - start_s, 1)
    return results


def _batch_tail_s(batch: list[Job]) -> float:
    """Predicted tail seconds of one run of a batch."""
    first = batch[0]
    if len(batch) > 1 and first.run_tail_s is not None:
        sizes = [job.size for job in batch]
        size = None if None in sizes else sum(s for s in sizes if s is not None)
        return first.run_tail_s(sum(len(job.items) for job in batch), size)
    return sum(job.cost_s if job.tail_s is None else job.tail_s for job in batch)


def _ends_by(first: Job, rows: int, size: float | None, now_s: float, due_s: float) -> bool:
    """Whether a run of ``rows`` items started now is predicted to end by ``due_s``.

    A bigger batch is one run that every member waits for: on a CPU a heavy graph costs
    about the same per row batched or not, so batching must not make a member late.
    """
    if first.run_tail_s is None or due_s == float("inf"):
        return True
    return now_s + first.run_tail_s(rows, size) <= due_s


def _is_late(job: Job, now_s: float) -> bool:
    return job.start_by_s is not None and now_s > job.start_by_s


def _late(job: Job, now_s: float) -> BackendTimeoutError:
    late_ms = (now_s - (job.start_by_s or now_s)) * 1000
    return BackendTimeoutError(
        "dropped before it ran: it could no longer finish by its deadline (latency budget "
        f"or timeout); a worker reached it {late_ms:.1f} ms after its last possible start"
    )


def _run_chunked(items: list[Any], run: TaskRun, max_rows: int) -> list[Any]:
    """Run items in runs of at most ``max_rows`` (one job alone)."""
    step = max(1, max_rows)
    if len(items) <= step:
        results = run(items)
        if len(results) != len(items):
            raise RuntimeError(f"task returned {len(results)} results for {len(items)} items")
        return results
    out: list[Any] = []
    for i in range(0, len(items), step):
        out.extend(_run_chunked(items[i : i + step], run, step))
    return out


def _deliver_all(outcomes: list[Outcome]) -> None:
    """Resolve futures on their loops, one wake-up per loop."""
    if not outcomes:
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, group in by_loop.items():
        try:
            loop.call_soon_threadsafe(_resolve, group)
        except RuntimeError:
            pass  # the loop has closed: nobody is waiting any more


def _resolve(outcomes: list[Outcome]) -> None:
    for job, results, error in outcomes:
        if job.future.done():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(results or [])
