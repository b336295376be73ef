"""Which variants a Triton server holds, within its GPU-memory budget. Pure policy.

Demand decides: a variant that requests would have chosen but that is not loaded is loaded
when there is room, or when room can be made by unloading the least useful loaded variants
(idle before busy, then least recent demand, then least recently used). A variant still
loading is never chosen; a busy one only when the caller allows draining, and then the caller
stops sending it requests and unloads it once its requests have finished, so a variant is
never unloaded with requests in flight. Nothing here performs a load; the caller does, and
reports back, so the policy is testable without a server and with an injected clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """A variant loaded (or loading) on a server."""

    model_name: str
    gpu_memory_bytes: int
    in_flight: int
    """Requests executing or queued on it now."""
    demand: float
    """Recent demand: requests that chose it in the demand window (decayed)."""
    last_used_s: float
    loading: bool = False
    """Loading or already being unloaded: not a candidate for eviction."""


@dataclass(frozen=True)
class PlacementPlan:
    """Unload ``evict`` (in order), then load ``load``; ``load`` None means: not now."""

    load: str | None
    evict: tuple[str, ...]
    reason: str


def plan_placement(
    wanted: str,
    wanted_bytes: int,
    wanted_demand: float,
    residents: list[Resident],
    budget_bytes: int,
    drain_margin: float | None = None,
) -> PlacementPlan:
    """Decide whether and how to make room for ``wanted`` on one server.

    Args:
        wanted: model name requests asked for.
        wanted_bytes: its GPU memory need (manifest ``gpu_memory_bytes``).
        wanted_demand: its recent demand, in the same units as ``Resident.demand``;
            ``math.inf`` for a request that has no loaded variant to run on.
        residents: what the server holds now.
        budget_bytes: the server's GPU-memory budget for models.
        drain_margin: None: variants with requests in flight are never evicted. A number
            ``m``: a busy variant may be evicted (drained first) when ``m`` times its demand
            is still below ``wanted_demand``, so only a clearly stronger demand displaces
            one in use.
    """
    if any(r.model_name == wanted for r in residents):
        return PlacementPlan(None, (), "already loaded or loading")
    if wanted_bytes > budget_bytes:
        return PlacementPlan(None, (), f"needs {wanted_bytes} B, budget is {budget_bytes} B")
    used = sum(r.gpu_memory_bytes for r in residents)
    if used + wanted_bytes <= budget_bytes:
        return PlacementPlan(wanted, (), "fits in free memory")

    def evictable(r: Resident) -> bool:
        if r.loading:
            return False
        if r.in_flight == 0:
            return True
        return drain_margin is not None and r.demand * drain_margin < wanted_demand

    # Least useful first: idle before busy, then lowest demand, then least recently used.
    candidates = sorted(
        filter(evictable, residents), key=lambda r: (r.in_flight > 0, r.demand, r.last_used_s)
    )
    evict: list[str] = []
    for r in candidates:
        if used + wanted_bytes <= budget_bytes:
            break
        if r.demand >= wanted_demand:
            continue  # at least as useful as what we would load
        evict.append(r.model_name)
        used -= r.gpu_memory_bytes
    if used + wanted_bytes <= budget_bytes:
        why = "a waiting request" if math.isinf(wanted_demand) else "more demand"
        return PlacementPlan(
            wanted, tuple(evict), f"evicting {len(evict)} less-used variant(s) for {why}"
        )
    return PlacementPlan(None, (), "no room: the rest is busy, loading or more in demand")


class DecayingCounts:
    """Event counts per key that decay exponentially: recent demand, without a window list.

    A count added ``t`` seconds ago weighs ``exp(-t / time_constant_s)``, so a steady rate
    of ``r`` events per second settles at ``r * time_constant_s``.
    """

    def __init__(self, time_constant_s: float) -> None:
        """Decay with ``time_constant_s`` (seconds, > 0)."""
        if time_constant_s <= 0:
            raise ValueError("time_constant_s must be positive")
        self.time_constant_s = time_constant_s
        self._counts: dict[str, tuple[float, float]] = {}

    def add(self, key: str, now_s: float, amount: float = 1.0) -> None:
        """Count ``amount`` events of ``key`` at clock time ``now_s``."""
        self._counts[key] = (self.value(key, now_s) + amount, now_s)

    def value(self, key: str, now_s: float) -> float:
        """The decayed count of ``key`` at ``now_s`` (0 if never counted)."""
        entry = self._counts.get(key)
        if entry is None:
            return 0.0
        count, at_s = entry
        return count * math.exp(-max(0.0, now_s - at_s) / self.time_constant_s)

    def forget(self, key: str) -> None:
        """Drop ``key`` (e.g. a variant that left the repository)."""
        self._counts.pop(key, None)
