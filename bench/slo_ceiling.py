"""Budget attainment at fractions of the fastest variant's own capacity: what the budgets allow.

The SLO bench (bench/slo.py) asks for nearly every budget met up to 0.9 times the fastest
variant's capacity. Near that rate no other variant has the capacity, so whatever routes
the requests, the fastest variant carries almost all of them; how many of them can meet
their budget is then a matter of queueing on this machine, not of routing. This bench
measures that ceiling in one run, with the SLO bench's budgets and items:

1. the largest variant's idle p95, which sets the budget mix, and every variant's
   closed-loop capacity (as bench/slo.py does);
2. one seeded open-loop trace (Poisson, flat phases of ``--phase-s``) at ``--fractions``
   of the fastest variant's capacity, with the same tight and loose budgets;
3. replayed ``--rounds`` times each, interleaved, on a fresh gateway each time, by two
   policies: ``fastest`` pins the fastest variant and sends no budget (every request runs;
   the client judges), ``gateway`` names the family and sends each request's budget;
4. beside them, a *clairvoyant* bound computed from the same trace: ``threads`` servers
   take requests in arrival order, each request costs its own item's measured time on the
   fastest variant (sequential latencies, scaled so that the servers together run at its
   closed-loop capacity), and a request is admitted only if it will finish within its
   budget (nothing late, no wasted work). No routing that must run these requests on the
   fastest variant's capacity can expect much more.

    .venv/bin/python bench/slo_ceiling.py --family translation
    .venv/bin/python bench/slo_ceiling.py --family vision

Results: ``bench/results/slo_ceiling_<family>[_triton].{json,md}``.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
from common import command_line, machine, write_results
from slo import (
    Stack,
    add_measuring_arguments,
    budget_mix,
    describe_budgets,
    measure,
    result_header,
    run_on_family,
    run_words,
)
from slo_load import Item, Outcome, replay, sequential_latency_s
from slo_report import is_attained, score_policy
from slo_trace import Phase, Trace, make_trace

from gateway.manifest import FamilyManifest

POLICIES = ("fastest", "gateway")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_measuring_arguments(parser)
    parser.add_argument("--threads", type=int, default=2, help="servers of the clairvoyant bound")
    parser.add_argument(
        "--fractions",
        default="0.3,0.5,0.7,0.9",
        help="phase rates, as fractions of the fastest variant's capacity",
    )
    args = parser.parse_args()
    report(args, *run_on_family(args, run))


async def run(
    stack: Stack, manifest: FamilyManifest, items: list[Item], args: argparse.Namespace
) -> dict[str, Any]:
    published = manifest.published()
    with stack.gateway() as url:
        idle, capacity = await measure(url, manifest, items, args)
        fastest = max(published, key=lambda v: capacity[v.name])
        alone = await sequential_latency_s(url, fastest.model_name, items, 2 * len(items))
    budgets = budget_mix(float(np.percentile(idle, 95)), args)
    fractions = [float(f) for f in args.fractions.split(",")]
    phases = tuple(Phase(f, args.phase_s) for f in sorted(fractions))
    # Phases scale the capacity they are given: here the fastest variant's.
    trace = make_trace(phases, capacity[fastest.name], budgets, len(items), args.seed)
    outcomes: dict[str, list[Outcome]] = {p: [] for p in POLICIES}
    for r in range(args.rounds):
        for policy in POLICIES[r % 2 :] + POLICIES[: r % 2]:
            print(f"round {r + 1}, {policy}: {len(trace.arrivals)} requests", flush=True)

            def request(arrival: Any, policy: str = policy) -> tuple[str, dict[str, Any] | None]:
                if policy == "gateway":
                    return manifest.family, {"latency_budget_ms": arrival.budget.seconds * 1000}
                return fastest.model_name, None

            with stack.gateway() as url:
                got = await replay(url, trace.arrivals, items, request, args.timeout_s)
            outcomes[policy] += got
    # Each item's cost: its mean sequential latency (the requests cycle through the items),
    # scaled to the closed-loop capacity.
    per_item = np.asarray(alone).reshape(-1, len(items)).mean(axis=0)
    per_item *= args.threads / capacity[fastest.name] / per_item.mean()
    return {
        "phases": phases,
        "budgets": budgets,
        "capacity": capacity,
        "fastest": fastest.name,
        "outcomes": outcomes,
        "clairvoyant": clairvoyant(trace, per_item, args.threads, len(phases)),
    }


def clairvoyant(trace: Trace, cost_s: np.ndarray, threads: int, phases: int) -> list[float]:
    """Per phase, the share a clairvoyant FIFO admission answers within budget.

    ``threads`` servers take requests in arrival order; a request whose known cost would end
    past its budget is refused at once and costs nothing.
    """
    free = [0.0] * threads
    met, seen = [0] * phases, [0] * phases
    for arrival in trace.arrivals:
        seen[arrival.phase] += 1
        first = min(range(threads), key=free.__getitem__)
        end = max(arrival.at_s, free[first]) + float(cost_s[arrival.item])
        if end - arrival.at_s <= arrival.budget.seconds:
            free[first] = end
            met[arrival.phase] += 1
    return [m / n if n else 1.0 for m, n in zip(met, seen, strict=True)]


def by_budget(outcomes: list[Outcome], phase: int, names: list[str]) -> dict[str, float]:
    """Attainment of one phase's requests, per budget class."""
    out = {}
    for name in names:
        mine = [o for o in outcomes if o.arrival.phase == phase and o.arrival.budget.name == name]
        out[name] = sum(map(is_attained, mine)) / len(mine) if mine else 1.0
    return out


def report(args: argparse.Namespace, manifest: FamilyManifest, result: dict[str, Any]) -> None:
    quality = {v.name: v.quality for v in manifest.published()}
    phases = result["phases"]
    scores = {
        p: score_policy(result["outcomes"][p], phases, quality, args.rounds) for p in POLICIES
    }
    names = [b.name for b in result["budgets"]]
    for p in POLICIES:
        for i, phase_score in enumerate(scores[p]["phases"]):
            phase_score["attainment_by_budget"] = by_budget(result["outcomes"][p], i, names)
    stem, words = run_words(args, "slo_ceiling")
    command = command_line("slo_ceiling.py", [*words, f"--fractions {args.fractions}"])
    budgets = describe_budgets(result["budgets"])
    fastest = result["fastest"]
    cap = result["capacity"][fastest]
    rows = [
        "| load × fastest's capacity | offered/s | fastest pinned: attained (tight / loose) "
        "| gateway: attained (tight / loose) · shed | clairvoyant bound |",
        "|---:|---:|---:|---:|---:|",
    ]

    def split(s: dict[str, Any]) -> str:
        parts = " / ".join(f"{100 * a:.1f}" for a in s["attainment_by_budget"].values())
        return f"{100 * s['attainment']:.1f} % ({parts})"

    for i, phase in enumerate(phases):
        pin, gw = scores["fastest"]["phases"][i], scores["gateway"]["phases"][i]
        rows.append(
            f"| {phase.load_x:g} | {pin['offered_per_s']:.0f} | {split(pin)} | "
            f"{split(gw)} · {100 * gw['shed']:.0f} % | {100 * result['clairvoyant'][i]:.1f} % |"
        )
    json_result = {
        **result_header(args, command, result["budgets"]),
        "capacity_per_s": result["capacity"],
        "fastest": fastest,
        "rounds": args.rounds,
        "policies": scores,
        "clairvoyant_attainment": dict(
            zip([p.load_x for p in phases], result["clairvoyant"], strict=True)
        ),
        "threads": args.threads,
    }
    markdown = "\n".join(
        [
            f"# Attainment at fractions of the fastest variant's capacity: {args.family} "
            f"({args.backend})",
            "",
            f"{machine()}; load generator and gateway share the machine. Fastest variant: "
            f"{fastest}, {cap:.0f}/s closed loop (the median of {args.rounds} turns). "
            f"Budgets: {budgets}, as in bench/slo.py. Open-loop Poisson, {args.phase_s:g} s "
            f"per rate, {args.rounds} replays per policy pooled (interleaved, a fresh gateway "
            "each). *fastest pinned* runs every request on the fastest variant: near the top "
            "of these rates no other variant has the capacity, so whatever routes the "
            "requests, the fastest variant carries them. *clairvoyant bound*: "
            f"{args.threads} servers in arrival order, each request costing its own item's "
            f"measured time on {fastest} (scaled to its closed-loop capacity), admitted only "
            "if it finishes within its budget.",
            "",
            *rows,
            "",
            f"Produced by `{command}`.",
        ]
    )
    write_results(stem, json_result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
