"""Pruned variants against fp32, timed in turns: how much faster pruning made each family.

The build profiles each variant on its own, one after the other, so a machine that gets busier
or quieter during a build moves one variant's figures and not the other's. Here every round
sends the same held-out item (batch 1, one request at a time) to fp32 and to each pruned
variant in turn, rotating the order, so slow spells fall on all of them alike. Each request is
timed as a whole (the task's pre/post-processing and decoding included) and inside the graph.

    .venv/bin/python bench/pruned_speedup.py                          # every family in model_repo
    .venv/bin/python bench/pruned_speedup.py --families speech --rounds 400

Results go to ``bench/results/pruned_speedup.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from builders.profile import GraphClock
from builders.zoo.registry import get_family
from gateway.manifest import FamilyManifest, Variant, find_manifests, load_manifest
from gateway.tasks.base import Task
from gateway.tasks.onnx_runner import GraphSessions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
INTRA_OP_THREADS = 1
"""As in the build's profiles (``ProfileSettings.intra_op_threads``)."""


class TimedVariant:
    """One variant's task and graph, with the time of each request and of its graph calls."""

    def __init__(
        self, repository: Path, family: str, variant: Variant, graph_names: list[str]
    ) -> None:
        graphs = {g: variant.graph_path(repository, g) for g in graph_names}
        self.name = variant.name
        self.task: Task = get_family(family).make_task(next(iter(graphs.values())).parent)
        self.clock = GraphClock(GraphSessions(graphs, INTRA_OP_THREADS))
        self.request_s: list[float] = []
        self.graph_s: list[float] = []

    def request(self, item: Any, record: bool) -> None:
        """Run one item end to end; keep its timings when ``record``."""
        self.clock.seconds = 0.0
        start = time.perf_counter()
        self.task.run([item], self.clock)
        if record:
            self.request_s.append(time.perf_counter() - start)
            self.graph_s.append(self.clock.seconds)


def compared_variants(manifest: FamilyManifest) -> list[Variant]:
    """fp32 and every published pruned fp32 variant (rejected ones are not in the repository)."""
    pruned = [v for v in manifest.published() if v.pruning_ratio > 0 and v.precision == "fp32"]
    return [manifest.variant("fp32"), *sorted(pruned, key=lambda v: v.pruning_ratio)]


def measure_family(
    repository: Path, manifest: FamilyManifest, items: list[Any], rounds: int, warmup: int
) -> list[dict[str, Any]]:
    """Interleaved timings of fp32 and the pruned variants; one row per variant."""
    names = manifest.graph_names()
    timed = [
        TimedVariant(repository, manifest.family, v, names) for v in compared_variants(manifest)
    ]
    for r in range(warmup + rounds):
        item = items[r % len(items)]
        shift = r % len(timed)
        for variant in timed[shift:] + timed[:shift]:
            variant.request(item, record=r >= warmup)
    fp32 = timed[0]
    rows = []
    for variant, info in zip(timed, compared_variants(manifest), strict=True):
        rows.append(
            {
                "family": manifest.family,
                "variant": variant.name,
                "quality_drop": info.quality_drop,
                "p50_ms": 1e3 * float(np.median(variant.request_s)),
                "graph_p50_ms": 1e3 * float(np.median(variant.graph_s)),
                "faster_p50": float(np.median(fp32.request_s) / np.median(variant.request_s)),
                "faster_graph_p50": float(np.median(fp32.graph_s) / np.median(variant.graph_s)),
                "runs": len(variant.request_s),
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """A readable table of the rows."""
    lines = [
        "# Pruned variants against fp32, timed in turns",
        "",
        f"{settings['rounds']} rounds per family after {settings['warmup']} warm-up rounds; "
        f"{settings['items']} held-out items; batch 1; ONNX Runtime with "
        f"{INTRA_OP_THREADS} intra-op thread; {settings['machine']}.",
        "",
        "| family | variant | Δ quality | p50 ms | × faster p50 | graph p50 ms | × faster graph |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['family']} | {row['variant']} | {-row['quality_drop']:+.2f} "
            f"| {row['p50_ms']:.2f} | {row['faster_p50']:.2f} "
            f"| {row['graph_p50_ms']:.2f} | {row['faster_graph_p50']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    """Measure the families of a repository and write JSON and Markdown results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--families", nargs="+", help="default: every family with a manifest")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--items", type=int, default=16, help="held-out items cycled through")
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0 or args.items < 1:
        parser.error("--rounds and --items must be >= 1, --warmup >= 0")
    manifests = {load_manifest(p).family: p for p in find_manifests(args.repository)}
    families = args.families or sorted(manifests)
    missing = [f for f in families if f not in manifests]
    if missing:
        parser.error(f"no manifest for {missing} in {args.repository}; build them first")

    rows: list[dict[str, Any]] = []
    for family in families:
        manifest = load_manifest(manifests[family])
        items = get_family(family).sample_items(args.items)
        rows += measure_family(args.repository, manifest, items, args.rounds, args.warmup)
        print(f"{family}: done", flush=True)
    settings = {
        "rounds": args.rounds,
        "warmup": args.warmup,
        "items": args.items,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "pruned_speedup.json").write_text(
        json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n"
    )
    text = markdown(rows, settings)
    (RESULTS / "pruned_speedup.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
