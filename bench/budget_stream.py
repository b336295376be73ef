"""Where the misses of one open-loop stream go: shed, dropped unrun, or answered late.

One family, one arrival rate (Poisson), one latency budget on every request (hard, the
default, or ``--policy soft``), sent to the family name so the gateway routes. The same
seeded stream is replayed ``--runs`` times, each against a freshly started gateway, so the
spread between runs shows how much of a difference is the machine's timing rather than the
gateway. Per run: misses, split into shed at arrival (RESOURCE_EXHAUSTED), dropped before
running (DEADLINE_EXCEEDED) and answered after the budget, the shed answers' latency, and
the variants that answered.

    .venv/bin/python bench/budget_stream.py --family translation --rate 50 --budget-ms 100

Results: ``bench/results/budget_stream_<family>_<policy>.{json,md}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, command_line, family_subset, machine, start_gateway, write_results
from slo import family_items
from slo_load import Outcome, replay, sequential_latency_s
from slo_report import SHED
from slo_trace import BudgetClass, Phase, make_trace

DROPPED = "DEADLINE_EXCEEDED"


def misses(outcomes: list[Outcome]) -> dict[str, Any]:
    """Misses by kind, shed latency and variant shares of one replay."""
    late = [o for o in outcomes if o.status == "OK" and o.latency_s > o.arrival.budget.seconds]
    shed_ms = [1000 * o.latency_s for o in outcomes if o.status == SHED] or [0.0]
    ok = [o.variant for o in outcomes if o.status == "OK"]
    counts = {
        "shed": sum(o.status == SHED for o in outcomes),
        "dropped": sum(o.status == DROPPED for o in outcomes),
        "late": len(late),
        "other_errors": sum(o.status not in ("OK", SHED, DROPPED) for o in outcomes),
    }
    return {
        "requests": len(outcomes),
        "misses": sum(counts.values()),
        **counts,
        "shed_p50_ms": float(np.percentile(shed_ms, 50)),
        "shed_p99_ms": float(np.percentile(shed_ms, 99)),
        "shares": {v: ok.count(v) / len(ok) for v in sorted(set(ok))},
    }


async def one_run(url: str, family: str, args: argparse.Namespace) -> dict[str, Any]:
    items = family_items(family, args.items)
    await sequential_latency_s(url, f"{family}__fp32", items, 40)  # warm, as in service
    budget = BudgetClass("budget", args.budget_ms / 1000, 1.0)
    phase = Phase(1.0, args.requests / args.rate)
    trace = make_trace((phase,), args.rate, (budget,), len(items), args.seed)
    parameters = {"latency_budget_ms": args.budget_ms, "latency_budget_policy": args.policy}
    outcomes = await replay(url, trace.arrivals, items, lambda _: (family, parameters), 10.0)
    return misses(outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="translation")
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--rate", type=float, default=50.0, help="arrivals per second")
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--policy", choices=["hard", "soft"], default="hard")
    parser.add_argument("--requests", type=int, default=900)
    parser.add_argument("--runs", type=int, default=3, help="fresh gateways, same stream")
    parser.add_argument("--items", type=int, default=200, help="requests in the item pool")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        subset = family_subset(args.repository.resolve(), args.family, Path(tmp) / "repository")
        for i in range(args.runs):
            proc, _, grpc_port = start_gateway(subset)
            try:
                runs.append(asyncio.run(one_run(f"127.0.0.1:{grpc_port}", args.family, args)))
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
            print(f"run {i + 1}: {runs[-1]['misses']} misses", flush=True)
    words = [f"--family {args.family}", f"--rate {args.rate:g}", f"--budget-ms {args.budget_ms:g}"]
    words += [f"--policy {args.policy}", f"--requests {args.requests}", f"--runs {args.runs}"]
    command = command_line("budget_stream.py", words)
    rows = [
        "| run | misses | shed | dropped unrun | late | shed p50 / p99 ms |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, r in enumerate(runs, 1):
        rows.append(
            f"| {i} | {r['misses']} | {r['shed']} | {r['dropped']} | {r['late']} | "
            f"{r['shed_p50_ms']:.1f} / {r['shed_p99_ms']:.1f} |"
        )
    markdown = "\n".join(
        [
            f"# Misses of one open-loop stream: {args.family}",
            "",
            f"{machine()}. {args.requests} requests, Poisson at {args.rate:g}/s, each with a "
            f"{args.budget_ms:g} ms {args.policy} latency budget, routed by the gateway; the "
            "same seeded stream against a fresh gateway each run.",
            "",
            *rows,
            "",
            f"Produced by `{command}`.",
            "",
        ]
    )
    result = {"family": args.family, "machine": machine(), "command": command, "runs": runs}
    write_results(f"budget_stream_{args.family}_{args.policy}", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
