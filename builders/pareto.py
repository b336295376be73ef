"""The size / latency / quality Pareto frontier of a family's variants."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """A variant reduced to the three things people trade off."""

    name: str
    size_bytes: int
    p95_s: float
    quality: float
    """Higher is better."""


def dominates(a: Point, b: Point) -> bool:
    """True if ``a`` is no worse than ``b`` on every axis and better on at least one."""
    no_worse = a.size_bytes <= b.size_bytes and a.p95_s <= b.p95_s and a.quality >= b.quality
    better = a.size_bytes < b.size_bytes or a.p95_s < b.p95_s or a.quality > b.quality
    return no_worse and better


def frontier(points: Sequence[Point]) -> set[str]:
    """Names of the points that no other point dominates."""
    return {p.name for p in points if not any(dominates(q, p) for q in points if q is not p)}
