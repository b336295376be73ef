"""Faults at run time: quarantining a failing variant, and a circuit breaker per backend.

Both are pure bookkeeping over an injected clock; the data plane (variants) and the Triton
scheduler (servers) feed them outcomes and ask them what may run.

**Variant quarantine.** A variant whose runs fail ``failures`` times in a row with a fault
of its own (its session or task code raising, Triton's INTERNAL; never bad input, load
shedding, deadlines or a server that is down) is quarantined: routed requests go to the
family's other variants and a request pinned to it answers UNAVAILABLE. After
``check_after_s`` a health check runs the variant on a canned input through its real task
code and backend; passing restores it, failing keeps it out for twice as long (up to
``max_check_after_s``). The last servable variant of a family is never quarantined, so a
client sending inputs that crash every variant cannot take a family down.

**Circuit breaker.** Each backend endpoint (a Triton server) has a breaker: ``failures``
server-side errors in a row from an endpoint that still answers its health probes (INTERNAL,
UNKNOWN, a response that cannot be read; not the client's errors, shedding, deadlines, or an
endpoint that is down, which the health probes take out and back) open it for ``open_s``;
no requests go there while it is open (they fail over to another server or the fallback).
Then it is half-open: one trial request goes through; success closes it, failure opens it
again for twice as long (up to ``max_open_s``). A breaker never opens for the last endpoint
still closed, for the same reason as above.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

import numpy as np

from gateway.routing.live import Clock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuarantinePolicy:
    """When a variant is taken out of service and when it is checked again."""

    failures: int = 3
    """Run-time failures in a row that quarantine a variant."""
    check_after_s: float = 10.0
    """Seconds until the first health check."""
    max_check_after_s: float = 300.0
    """Longest wait between checks (the wait doubles after each failed check)."""

    def __post_init__(self) -> None:
        if self.failures < 1 or self.check_after_s <= 0:
            raise ValueError("failures must be >= 1 and check_after_s > 0")
        if self.max_check_after_s < self.check_after_s:
            raise ValueError("max_check_after_s must be at least check_after_s")


@dataclass
class _Record:
    failures: int = 0
    quarantined: bool = False
    check_at_s: float = 0.0
    wait_s: float = 0.0
    reason: str = ""


class Quarantine:
    """Consecutive run-time failures per variant, and the variants taken out of service."""

    def __init__(self, policy: QuarantinePolicy, clock: Clock) -> None:
        """Track variants under ``policy``."""
        self.policy = policy
        self.clock = clock
        self._records: dict[Hashable, _Record] = {}

    def is_quarantined(self, key: Hashable) -> bool:
        """Whether ``key`` is out of service."""
        record = self._records.get(key)
        return record is not None and record.quarantined

    def reason(self, key: Hashable) -> str:
        """Why ``key`` is out of service, and when it is checked again."""
        record = self._records.get(key)
        if record is None or not record.quarantined:
            return ""
        due_s = max(0.0, record.check_at_s - self.clock())
        return (
            f"quarantined after {self.policy.failures} failed runs in a row (last: "
            f"{record.reason}); next health check in {due_s:.0f} s"
        )

    def succeeded(self, key: Hashable) -> None:
        """A run of ``key`` succeeded: its run of failures ends."""
        record = self._records.get(key)
        if record is not None and not record.quarantined:
            record.failures = 0

    def failed(self, key: Hashable, reason: str, *, may_quarantine: bool) -> bool:
        """A run of ``key`` failed with a fault of its own.

        Args:
            key: The variant.
            reason: One line on what failed (logged, shown to pinned requests).
            may_quarantine: False when quarantining it would leave its family nothing.

        Returns:
            True if this failure quarantined it.
        """
        record = self._records.setdefault(key, _Record())
        if record.quarantined:
            return False
        record.failures += 1
        record.reason = reason
        if record.failures < self.policy.failures or not may_quarantine:
            return False
        record.quarantined = True
        record.wait_s = self.policy.check_after_s
        record.check_at_s = self.clock() + record.wait_s
        return True

    def check_at(self, key: Hashable) -> float | None:
        """Clock time of ``key``'s next health check (None if it is in service)."""
        record = self._records.get(key)
        return record.check_at_s if record is not None and record.quarantined else None

    def check_passed(self, key: Hashable) -> None:
        """The health check passed: ``key`` serves again, its failures forgotten."""
        self._records.pop(key, None)

    def check_failed(self, key: Hashable, reason: str) -> float:
        """The health check failed: wait twice as long; returns the seconds to the next one."""
        record = self._records.setdefault(key, _Record(quarantined=True))
        record.quarantined = True
        record.reason = reason
        record.wait_s = min(
            self.policy.max_check_after_s, max(record.wait_s, self.policy.check_after_s) * 2
        )
        record.check_at_s = self.clock() + record.wait_s
        return record.wait_s

    def forget(self, keys: set[Hashable]) -> None:
        """Drop the records of variants no longer served (after a reload)."""
        for key in keys:
            self._records.pop(key, None)


PROBE_ITEMS: dict[str, Callable[[], list[object]]] = {
    "image-labels": lambda: [np.full((32, 32, 3), 128, dtype=np.uint8)],
    "audio-text": lambda: [np.zeros(8000, dtype=np.float32)],
    "text-text": lambda: ["hello world"],
}
"""A canned, valid task item per task kind: what a health check runs a variant on."""


class BreakerState(enum.Enum):
    """Where a circuit breaker stands; the value is what the state gauge reports."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True)
class BreakerPolicy:
    """When a backend endpoint's circuit opens and for how long."""

    failures: int = 5
    """Server-side errors in a row that open the circuit."""
    open_s: float = 5.0
    """Seconds it stays open the first time."""
    max_open_s: float = 60.0
    """Longest it stays open (the time doubles after each failed trial)."""

    def __post_init__(self) -> None:
        if self.failures < 1 or self.open_s <= 0:
            raise ValueError("failures must be >= 1 and open_s > 0")
        if self.max_open_s < self.open_s:
            raise ValueError("max_open_s must be at least open_s")


Transition = Callable[[str, BreakerState, BreakerState, str], None]
"""Called with ``(name, old state, new state, why)`` on every change."""


@dataclass
class CircuitBreaker:
    """One endpoint's breaker (see the module docstring for the policy)."""

    name: str
    policy: BreakerPolicy
    clock: Clock
    on_change: Transition | None = None
    _state: BreakerState = BreakerState.CLOSED
    _failures: int = 0
    _open_s: float = 0.0
    _until_s: float = 0.0
    _trial: bool = field(default=False)
    """A half-open trial is in flight."""

    @property
    def state(self) -> BreakerState:
        """The state now (an open circuit whose time is up reads half-open)."""
        if self._state is BreakerState.OPEN and self.clock() >= self._until_s:
            self._move(BreakerState.HALF_OPEN, "open time over: the next request is a trial")
        return self._state

    def would_allow(self) -> bool:
        """Whether a request could go now, without claiming the half-open trial."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial)

    def allow(self) -> bool:
        """Whether a request may go now; in the half-open state, claims the one trial."""
        if not self.would_allow():
            return False
        if self._state is BreakerState.HALF_OPEN:
            self._trial = True
        return True

    def succeeded(self) -> None:
        """A request there succeeded."""
        self._failures = 0
        self._trial = False
        if self._state is not BreakerState.CLOSED:
            self._open_s = 0.0
            self._move(BreakerState.CLOSED, "a trial request succeeded")

    def undecided(self) -> None:
        """A request there ended saying nothing about the server (bad input, a deadline).

        A half-open trial is handed back, so the next request tries.
        """
        self._trial = False

    def failed(self, reason: str, *, may_open: bool = True) -> None:
        """A request there failed with a server-side error.

        Args:
            reason: One line on the error (logged on a transition).
            may_open: False when opening would leave no endpoint closed.
        """
        self._failures += 1
        if self._state is BreakerState.HALF_OPEN and self._trial:
            self._trial = False
            self._open(min(self.policy.max_open_s, self._open_s * 2), f"the trial failed: {reason}")
        elif self._state is BreakerState.CLOSED and self._failures >= self.policy.failures:
            if may_open:
                self._open(self.policy.open_s, f"{self._failures} failures in a row: {reason}")

    def _open(self, seconds: float, why: str) -> None:
        self._open_s = seconds
        self._until_s = self.clock() + seconds
        self._move(BreakerState.OPEN, f"{why}; open for {seconds:g} s")

    def _move(self, state: BreakerState, why: str) -> None:
        old, self._state = self._state, state
        if old is not state and self.on_change is not None:
            self.on_change(self.name, old, state, why)
