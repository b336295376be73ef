"""Which variants a Triton server holds, within its GPU-memory budget. Pure policy.

Demand decides: a variant that requests would have chosen but that is not loaded is loaded
when there is room, or when room can be made by unloading the least useful loaded variants
(least recent demand, then least recently used). A variant with requests in flight, or
still loading, is never unloaded. Nothing here performs a load; the caller does, and reports
back, so the policy is testable without a server and with an injected clock.
"""

from __future__ import annotations

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
) -> PlacementPlan:
    """Decide whether and how to make room for ``wanted`` on one server.

    Args:
        wanted: model name requests asked for.
        wanted_bytes: its GPU memory need (manifest ``gpu_memory_bytes``).
        wanted_demand: its recent demand, in the same units as ``Resident.demand``.
        residents: what the server holds now.
        budget_bytes: the server's GPU-memory budget for models.
    """
    if any(r.model_name == wanted for r in residents):
        return PlacementPlan(None, (), "already loaded or loading")
    if wanted_bytes > budget_bytes:
        return PlacementPlan(None, (), f"needs {wanted_bytes} B, budget is {budget_bytes} B")
    used = sum(r.gpu_memory_bytes for r in residents)
    if used + wanted_bytes <= budget_bytes:
        return PlacementPlan(wanted, (), "fits in free memory")
    # Least useful first: lowest demand, then least recently used.
    evictable = sorted(
        (r for r in residents if r.in_flight == 0 and not r.loading),
        key=lambda r: (r.demand, r.last_used_s),
    )
    evict: list[str] = []
    for r in evictable:
        if used + wanted_bytes <= budget_bytes:
            break
        if r.demand >= wanted_demand:
            # Everything left is at least as useful as what we would load.
            break
        evict.append(r.model_name)
        used -= r.gpu_memory_bytes
    if used + wanted_bytes <= budget_bytes:
        return PlacementPlan(wanted, tuple(evict), f"evicting {len(evict)} less-used variant(s)")
    return PlacementPlan(None, (), "no room: the rest is busy, loading or more in demand")
