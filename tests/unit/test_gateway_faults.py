"""Quarantine and circuit-breaker policies over an injected clock."""

from __future__ import annotations

import pytest

from gateway.faults import (
    PROBE_ITEMS,
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    Quarantine,
    QuarantinePolicy,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_variant_is_quarantined_after_failures_in_a_row_only():
    clock = Clock()
    q = Quarantine(QuarantinePolicy(failures=3, check_after_s=10, max_check_after_s=40), clock)
    assert not q.failed("v", "boom", may_quarantine=True)
    q.succeeded("v")  # the run of failures ends
    assert not q.failed("v", "boom", may_quarantine=True)
    assert not q.failed("v", "boom", may_quarantine=True)
    assert q.failed("v", "bad shape", may_quarantine=True)
    assert q.is_quarantined("v") and not q.is_quarantined("w")
    assert q.check_at("v") == 110.0
    assert "after 3 failed runs in a row (last: bad shape); next health check in 10 s" in q.reason(
        "v"
    )
    assert not q.failed("v", "again", may_quarantine=True)  # already out


def test_failed_checks_back_off_and_a_passed_one_restores():
    clock = Clock()
    q = Quarantine(QuarantinePolicy(failures=1, check_after_s=10, max_check_after_s=40), clock)
    q.failed("v", "x", may_quarantine=True)
    assert [q.check_failed("v", "still") for _ in range(4)] == [20, 40, 40, 40]
    assert q.check_at("v") == 140.0
    q.check_passed("v")
    assert not q.is_quarantined("v") and q.check_at("v") is None and q.reason("v") == ""


def test_the_last_variant_of_a_family_is_never_quarantined():
    q = Quarantine(QuarantinePolicy(failures=1), Clock())
    assert not q.failed("only", "x", may_quarantine=False)
    assert not q.is_quarantined("only")


def test_forgetting_drops_retired_variants():
    q = Quarantine(QuarantinePolicy(failures=1), Clock())
    q.failed("old", "x", may_quarantine=True)
    q.forget({"old"})
    assert not q.is_quarantined("old")


@pytest.mark.parametrize("task", ["image-labels", "audio-text", "text-text"])
def test_every_task_has_a_probe_item(task):
    assert len(PROBE_ITEMS[task]()) == 1


def test_policies_refuse_nonsense():
    with pytest.raises(ValueError):
        QuarantinePolicy(failures=0)
    with pytest.raises(ValueError):
        BreakerPolicy(open_s=10, max_open_s=5)


def breaker(clock, changes):
    return CircuitBreaker(
        "triton-a",
        BreakerPolicy(failures=3, open_s=5, max_open_s=15),
        clock,
        on_change=lambda name, old, new, why: changes.append((old.name, new.name, why)),
    )


def test_the_breaker_opens_after_failures_in_a_row_and_trials_after_its_time():
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(2):
        b.failed("UNAVAILABLE")
    b.succeeded()
    for _ in range(2):
        b.failed("UNAVAILABLE")
    assert b.state is BreakerState.CLOSED and b.allow()
    b.failed("INTERNAL: model crashed")
    assert b.state is BreakerState.OPEN and not b.allow()
    assert changes[-1][:2] == ("CLOSED", "OPEN") and "open for 5 s" in changes[-1][2]
    clock.now += 5
    assert b.state is BreakerState.HALF_OPEN
    assert b.allow()  # the one trial
    assert not b.allow() and not b.would_allow()  # nobody else while it runs
    b.failed("INTERNAL")
    assert b.state is BreakerState.OPEN and "open for 10 s" in changes[-1][2]
    clock.now += 9.9
    assert b.state is BreakerState.OPEN
    clock.now += 0.1
    assert b.allow()
    b.failed("INTERNAL")
    assert "open for 15 s" in changes[-1][2]  # capped
    clock.now += 15
    assert b.allow()
    b.succeeded()
    assert b.state is BreakerState.CLOSED and b.allow()
    assert [c[:2] for c in changes][-2:] == [("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    for _ in range(3):
        b.failed("x")
    assert "open for 5 s" in changes[-1][2]  # a closed circuit starts again from open_s


def test_the_breaker_stays_closed_when_it_may_not_open():
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(10):
        b.failed("x", may_open=False)
    assert b.state is BreakerState.CLOSED and changes == []


def test_a_trial_without_a_verdict_is_handed_to_the_next_request():
    clock, changes = Clock(), []
    b = breaker(clock, changes)
    for _ in range(3):
        b.failed("x")
    clock.now += 5
    assert b.allow() and not b.would_allow()
    b.undecided()  # e.g. the trial request carried bad input
    assert b.allow()
    b.succeeded()
    assert b.state is BreakerState.CLOSED
