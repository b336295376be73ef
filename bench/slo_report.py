"""Scores of the SLO bench: attainment, goodput, shedding, quality per phase; table and plot."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from slo_load import Outcome
from slo_trace import Phase

SHED = "RESOURCE_EXHAUSTED"


def is_attained(o: Outcome) -> bool:
    """Answered OK within its budget, as the client measured."""
    return o.status == "OK" and o.latency_s <= o.arrival.budget.seconds


def score(
    outcomes: Sequence[Outcome], seconds: float, quality: Mapping[str, float]
) -> dict[str, Any]:
    """The numbers of one stretch of the trace (a phase, or all of it)."""
    total = len(outcomes)
    attained = [o for o in outcomes if is_attained(o)]
    ok = [o for o in outcomes if o.status == "OK"]
    shed = [o for o in outcomes if o.status == SHED]
    statuses = Counter(o.status for o in outcomes)
    lat = np.array([o.latency_s for o in ok]) * 1000 if ok else np.array([0.0])
    shed_ms = np.array([o.latency_s for o in shed]) * 1000 if shed else np.array([0.0])
    shares = Counter(o.variant for o in ok)
    return {
        "requests": total,
        "attainment": len(attained) / total if total else 1.0,
        "goodput_per_s": len(attained) / seconds if seconds else 0.0,
        "offered_per_s": total / seconds if seconds else 0.0,
        "shed": len(shed) / total if total else 0.0,
        "quality": float(np.mean([quality[o.variant] for o in attained])) if attained else 0.0,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "shed_p99_ms": float(np.percentile(shed_ms, 99)),
        "statuses": dict(statuses),
        "shares": {v: n / len(ok) for v, n in sorted(shares.items())} if ok else {},
    }


def score_policy(
    outcomes: Sequence[Outcome],
    phases: Sequence[Phase],
    quality: Mapping[str, float],
    rounds: int = 1,
) -> dict[str, Any]:
    """Overall and per-phase scores of one policy's ``rounds`` replays of the trace, pooled."""
    per_phase = []
    for index, phase in enumerate(phases):
        mine = [o for o in outcomes if o.arrival.phase == index]
        per_phase.append(
            {"load_x": phase.load_x, "bursty": phase.bursty}
            | score(mine, rounds * phase.seconds, quality)
        )
    overall = score(outcomes, rounds * sum(p.seconds for p in phases), quality)
    return {"overall": overall, "phases": per_phase}


def timeline(outcomes: Sequence[Outcome], seconds: float, bin_s: float = 1.0) -> dict[str, Any]:
    """Attainment and variant shares per ``bin_s`` of arrival time (for the plot).

    Replays of the same trace pool into the same bins: the means over the rounds.
    """
    bins = int(np.ceil(seconds / bin_s))
    attained = np.zeros(bins)
    counts = np.zeros(bins)
    variants = sorted({o.variant for o in outcomes if o.status == "OK"})
    share = {v: np.zeros(bins) for v in variants}
    for o in outcomes:
        b = min(bins - 1, int(o.arrival.at_s / bin_s))
        counts[b] += 1
        attained[b] += is_attained(o)
        if o.status == "OK":
            share[o.variant][b] += 1
    safe = np.maximum(counts, 1)
    return {
        "t_s": (np.arange(bins) * bin_s).tolist(),
        "attainment": (attained / safe).tolist(),
        "offered": counts.tolist(),
        "shares": {v: (c / safe).tolist() for v, c in share.items()},
    }


def table(
    policies: Mapping[str, Mapping[str, Any]], phases: Sequence[Phase], attainable: Sequence[int]
) -> list[str]:
    """Markdown rows: one per phase and one overall, a column per policy, then the bound.

    ``attainable``: per phase, the most requests any policy could answer in budget at the
    fastest variant's capacity (:func:`slo_trace.attainable`).
    """
    names = list(policies)
    head = "| phase (load × largest's capacity) | " + " | ".join(names) + " | attainable |"
    rows = [head, "|---|" + "---:|" * (len(names) + 1)]
    first = next(iter(policies.values()))
    requests = [p["requests"] for p in first["phases"]]

    def bound(count: int, total: int) -> str:
        return f"{100 * count / total:.1f} %" if total else "–"

    def cell(s: Mapping[str, Any]) -> str:
        return (
            f"{100 * s['attainment']:.1f} % · {s['goodput_per_s']:.0f}/s · "
            f"shed {100 * s['shed']:.0f} % · q {s['quality']:.1f}"
        )

    for i, phase in enumerate(phases):
        label = f"{phase.load_x:g}{' bursty' if phase.bursty else ''}"
        cells = [cell(policies[n]["phases"][i]) for n in names]
        cells.append(bound(attainable[i], requests[i]))
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [cell(policies[n]["overall"]) for n in names]
    cells.append(bound(sum(attainable), sum(requests)))
    rows.append("| **overall** | " + " | ".join(cells) + " |")
    return rows


def plot(path: Path, title: str, timelines: Mapping[str, Mapping[str, Any]]) -> None:
    """One panel per policy: attainment over time and the share of each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(timelines), 1, figsize=(10, 2.4 * len(timelines)), sharex=True)
    for ax, (name, line) in zip(np.atleast_1d(axes), timelines.items(), strict=True):
        t = line["t_s"]
        shares = line["shares"]
        ax.stackplot(t, *shares.values(), labels=list(shares), alpha=0.35, step="post")
        ax.step(t, line["attainment"], where="post", color="black", label="attained")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(name)
        ax.legend(loc="lower left", fontsize=7, ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("seconds into the trace")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
