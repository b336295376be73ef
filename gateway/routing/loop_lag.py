"""How far behind the event loop runs: the wait a request has had before routing sees it.

A request queues in the transport (the socket, gRPC's completion queue) until the loop gets
to it, and nothing in the request says how long that took. A timer that asks to wake every
``interval_s`` wakes late by about that wait when the loop is busy, so its lateness stands
for the time a request has already lost on arrival: admission counts it against the budget
(and sheds early when the loop is the bottleneck), and cheap tasks stop running inline on
the loop while it lags. The median of the last few wake-ups is used: a backlog makes every
one late, while a single slow step (a load, the scheduler) should not move it.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
from collections import deque

from gateway.routing.live import Clock


class LoopLag:
    """The event loop's recent lateness in waking up, in seconds."""

    def __init__(self, clock: Clock, interval_s: float = 0.005, window: int = 9) -> None:
        """Measure every ``interval_s``; the lag is the median of the last ``window``."""
        self._clock = clock
        self.interval_s = interval_s
        self._recent: deque[float] = deque(maxlen=window)
        self.lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start measuring on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._measure())

    async def _measure(self) -> None:
        while True:
            asked = self._clock()
            await asyncio.sleep(self.interval_s)
            self.record(self._clock() - asked - self.interval_s)

    def record(self, late_s: float) -> None:
        """One wake-up came ``late_s`` seconds late."""
        self._recent.append(max(0.0, late_s))
        self.lag_s = statistics.median(self._recent)

    async def stop(self) -> None:
        """Stop measuring."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
