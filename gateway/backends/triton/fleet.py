"""The replicas together: lookup, the variants being served, background tasks, wake-ups.

Requests that wait (for a load, for a lease to end) sleep on one event that every change of
residency or health sets, in slices short enough that they re-plan as leases end.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any

from gateway.backends.base import ModelRef
from gateway.backends.triton.replica import Replica, least_busy

WAIT_SLICE_S = 0.1
"""Longest sleep of a request waiting for a change, so it re-plans as leases end."""


class Fleet:
    """Every replica, the variants the registry serves, and the change signal."""

    def __init__(
        self, urls: Sequence[str], metrics_urls: Sequence[str], clock: Callable[[], float]
    ) -> None:
        """One replica per URL (``metrics_urls`` in the same order, or empty)."""
        self.clock = clock
        self.replicas = [
            Replica(url, metrics_urls[i] if metrics_urls else None, on_idle=self.nudge)
            for i, url in enumerate(urls)
        ]
        self._by_url = {r.url: r for r in self.replicas}
        self.known: dict[str, ModelRef] = {}
        """Variants the registry serves (``load`` was called), by model name."""
        self._changed: asyncio.Event | None = None
        self._waiters = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __iter__(self) -> Iterator[Replica]:
        return iter(self.replicas)

    def get(self, url: str) -> Replica | None:
        """The replica at ``url`` (None for "" or an unknown address)."""
        return self._by_url.get(url)

    def healthy(self) -> list[Replica]:
        """Replicas answering their probes."""
        return [r for r in self.replicas if r.healthy]

    def any_healthy(self) -> bool:
        """Whether any replica answers its probes."""
        return any(r.healthy for r in self.replicas)

    def least_busy(self, name: str, skip: frozenset[str] = frozenset()) -> Replica | None:
        """The least busy healthy replica serving ``name``, not among ``skip`` URLs."""
        return least_busy(r for r in self.replicas if r.serves(name) and r.url not in skip)

    def bytes_of(self, name: str) -> int:
        """GPU memory of a served variant, from its manifest (0 if not served)."""
        ref = self.known.get(name)
        return ref.gpu_memory_bytes if ref is not None else 0

    def resident_bytes(self, replica: Replica) -> int:
        """GPU memory of everything ``replica`` holds, loads or drains."""
        return sum(self.bytes_of(n) for n in replica.held())

    # -- background work and wake-ups ------------------------------------------------------

    def open(self) -> None:
        """Create the change signal on the running loop."""
        self._changed = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background until it ends or :meth:`stop` cancels it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Cancel every background task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def notify(self) -> None:
        """Wake requests waiting for residency or health to change."""
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def nudge(self) -> None:
        """Wake waiters only if there are any (a lease or a run ended)."""
        if self._waiters:
            self.notify()

    async def wait_change(self, timeout_s: float) -> None:
        """Sleep until something changes, at most ``timeout_s`` (and one slice)."""
        event = self._changed
        if event is None:
            await asyncio.sleep(timeout_s)
            return
        self._waiters += 1
        try:
            await asyncio.wait_for(event.wait(), min(timeout_s, WAIT_SLICE_S))
        except TimeoutError:
            pass
        finally:
            self._waiters -= 1
