"""The task pool: batching of queued jobs, refusal when full, late work dropped unrun."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from gateway.errors import BackendTimeoutError, VariantUnavailableError
from gateway.execution import Job, TaskPool


class Recorder:
    """A task that doubles numbers, records each run's items and can be held."""

    def __init__(self) -> None:
        self.runs: list[list[Any]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()

    def __call__(self, items: list[Any]) -> list[Any]:
        self.started.set()
        self.gate.wait(10)
        if "bad" in items:
            raise ValueError("bad item")
        self.runs.append(list(items))
        return [2 * x for x in items]


def job(
    loop, task, items, key="k", cost_s=0.01, max_rows=8, start_by_s=None, observe=None, due_s=0.0
):
    return Job(
        key=key,
        items=list(items),
        run=task,
        cost_s=cost_s,
        max_rows=max_rows,
        due_s=due_s,
        start_by_s=start_by_s,
        future=loop.create_future(),
        loop=loop,
        label=str(key),
        observe=observe,
    )


async def held_pool(task: Recorder, **kw) -> tuple[TaskPool, Job]:
    """A one-thread pool whose worker is busy with a first job until ``task.gate`` opens."""
    loop = asyncio.get_running_loop()
    clock = kw.pop("clock", time.monotonic)
    pool = TaskPool("test", 1, max_queue=kw.pop("max_queue", 16), clock=clock)
    task.gate.clear()
    first = job(loop, task, [0], key="first")
    assert pool.submit(first)
    assert await asyncio.to_thread(task.started.wait, 10)
    return pool, first


async def test_queued_jobs_with_one_key_share_a_run_in_order():
    task = Recorder()
    pool, first = await held_pool(task)
    loop = asyncio.get_running_loop()
    jobs = [job(loop, task, [i, i + 10]) for i in range(1, 4)] + [job(loop, task, [7], key="o")]
    for j in jobs:
        assert pool.submit(j)
    task.gate.set()
    results = await asyncio.gather(*(j.future for j in jobs))
    await first.future
    pool.close()
    assert results == [[2, 22], [4, 24], [6, 26], [14]]
    assert task.runs == [[0], [1, 11, 2, 12, 3, 13], [7]]


async def test_batch_limit_and_unbatched_jobs():
    task = Recorder()
    pool, first = await held_pool(task)
    loop = asyncio.get_running_loop()
    jobs = [job(loop, task, [i, i], max_rows=4) for i in range(1, 4)]
    big = job(loop, task, list(range(5)), key="big", max_rows=2)
    for j in [*jobs, big]:
        pool.submit(j)
    task.gate.set()
    await asyncio.gather(*(j.future for j in [*jobs, big]))
    pool.close()
    # 2+2 rows fill a run of 4; the third waits for the next; 5 rows alone go 2 by 2.
    assert task.runs[1:] == [[1, 1, 2, 2], [3, 3], [0, 1], [2, 3], [4]]


async def test_a_full_queue_refuses_and_close_fails_what_waits():
    task = Recorder()
    pool, first = await held_pool(task, max_queue=2)
    loop = asyncio.get_running_loop()
    waiting = [job(loop, task, [1], key=i) for i in range(2)]
    assert all(pool.submit(j) for j in waiting)
    assert not pool.submit(job(loop, task, [1]))
    pool.close()
    task.gate.set()
    for j in waiting:
        with pytest.raises(VariantUnavailableError, match="shutting down"):
            await j.future
    assert await first.future == [0]


async def test_late_jobs_are_dropped_before_they_run():
    task = Recorder()
    pool, first = await held_pool(task)
    loop = asyncio.get_running_loop()
    late = job(loop, task, [5], start_by_s=time.monotonic() + 0.05)
    in_time = job(loop, task, [6], key="other", start_by_s=time.monotonic() + 60)
    pool.submit(late)
    pool.submit(in_time)
    await asyncio.sleep(0.1)  # the first job holds the worker past the late job's start-by
    task.gate.set()
    with pytest.raises(BackendTimeoutError, match="dropped before it ran"):
        await late.future
    assert await in_time.future == [12]
    pool.close()
    assert [5] not in task.runs


async def test_one_bad_job_fails_alone():
    task = Recorder()
    pool, first = await held_pool(task)
    loop = asyncio.get_running_loop()
    good, bad, also = (job(loop, task, items) for items in ([1], ["bad"], [3]))
    for j in (good, bad, also):
        pool.submit(j)
    task.gate.set()
    assert await good.future == [2]
    with pytest.raises(ValueError, match="bad item"):
        await bad.future
    assert await also.future == [6]
    pool.close()


async def test_abandoned_jobs_are_skipped_and_runs_are_observed():
    task = Recorder()
    seen: list[tuple[int, float | None, float]] = []
    pool, first = await held_pool(task)
    loop = asyncio.get_running_loop()
    gone = job(loop, task, [1], key="gone")
    kept = job(loop, task, [2], key="kept", observe=lambda *a: seen.append(a))
    pool.submit(gone)
    pool.submit(kept)
    gone.abandoned = True
    task.gate.set()
    assert await kept.future == [4]
    pool.close()
    assert [1] not in task.runs
    assert len(seen) == 1 and seen[0][0] == 1 and seen[0][2] >= 0


async def test_jobs_due_first_run_first_and_count_as_ahead():
    task = Recorder()
    pool, first = await held_pool(task, clock=lambda: 0.0)  # the first run just started
    loop = asyncio.get_running_loop()
    late, soon, sooner = (
        job(loop, task, [i], key=i, cost_s=0.1, due_s=due)
        for i, due in ((1, 30.0), (2, 20.0), (3, 10.0))
    )
    for j in (late, soon, sooner):
        pool.submit(j)
    assert pool.stats(due_s=15.0).work_ahead_s == pytest.approx(0.1, abs=0.011)
    assert pool.stats(due_s=25.0).work_ahead_s == pytest.approx(0.2, abs=0.011)
    # One thread, busy for 0.01 s more: a job due at 25 waits for that and two jobs.
    assert pool.stats(due_s=25.0).wait_s == pytest.approx(0.21)
    task.gate.set()
    await asyncio.gather(late.future, soon.future, sooner.future)
    pool.close()
    assert task.runs[1:] == [[3], [2], [1]]


async def test_wait_lays_the_work_ahead_out_on_the_threads():
    task = Recorder()
    loop = asyncio.get_running_loop()
    pool = TaskPool("test", 2, max_queue=16, clock=time.monotonic)
    task.gate.clear()
    assert pool.stats().wait_s == 0.0  # an idle thread takes a new job at once
    pool.submit(job(loop, task, [0], key="a", cost_s=1.0, due_s=1.0))
    assert await asyncio.to_thread(task.started.wait, 10)
    assert pool.stats(due_s=5.0).wait_s == 0.0  # one thread still free
    pool.submit(job(loop, task, [1], key="b", cost_s=0.5, due_s=2.0))
    pool.submit(job(loop, task, [2], key="c", cost_s=0.25, due_s=3.0))
    await asyncio.sleep(0.05)
    # Both threads busy (about 0.95 s and 0.45 s left); "c" queued next takes the second.
    assert pool.stats(due_s=5.0).wait_s == pytest.approx(0.7, abs=0.06)
    task.gate.set()
    pool.close()


async def test_work_ahead_counts_queued_and_running_costs():
    task = Recorder()
    now = [0.0]
    pool, first = await held_pool(task, clock=lambda: now[0])
    loop = asyncio.get_running_loop()
    for i in range(3):
        pool.submit(job(loop, task, [i], key=i, cost_s=0.5))
    stats = pool.stats()
    assert (stats.queued, stats.running, stats.threads) == (3, 1, 1)
    assert stats.work_ahead_s == pytest.approx(1.51)  # three queued, the running one's 0.01
    assert stats.wait_s == pytest.approx(1.51)
    # 0.2 s into a run predicted to end by 0.01 s: it is taken to overrun as much again.
    now[0] = 0.2
    assert pool.stats().wait_s == pytest.approx(1.5 + 0.19)
    assert pool.queued("1") == 1 and pool.has_queue()
    task.gate.set()
    pool.close()
