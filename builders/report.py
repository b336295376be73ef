"""A family's build report: a Markdown table of every variant and a Pareto plot (PNG)."""

from __future__ import annotations

from pathlib import Path

from gateway.manifest import FamilyManifest, Variant

MIB = 1024 * 1024


def _p50_batch1(v: Variant, graph: bool = False) -> float:
    point = v.latency_at(1, 1)
    value = (point.graph_p50_s if graph else point.p50_s) if point else None
    return float("nan") if value is None else value


def pruning_summary(manifest: FamilyManifest) -> list[str]:
    """How far pruning went within the quality budget, and what it bought at p50, batch 1."""
    pruned = [v for v in manifest.variants if v.pruning_ratio > 0 and v.precision == "fp32"]
    if not pruned:
        return []
    kept = [v for v in pruned if v.status == "published"]
    if not kept:
        return ["## Pruning", "", "No pruning ratio stayed within the quality budget.", ""]
    fp32, best = manifest.variant("fp32"), max(kept, key=lambda v: v.pruning_ratio)
    task = _p50_batch1(fp32) / _p50_batch1(best)
    graph = _p50_batch1(fp32, graph=True) / _p50_batch1(best, graph=True)
    return [
        "## Pruning",
        "",
        f"Largest pruning ratio within the quality budget: `{best.name}`, "
        f"{best.quality_drop:.2f} points of {manifest.metric.name} lost; "
        f"p50 at batch 1 is {task:.2f}× faster than fp32 per request and "
        f"{graph:.2f}× inside the graph.",
        "",
    ]


def markdown(manifest: FamilyManifest, skipped: list[str] | None = None) -> str:
    """The report text: one row per variant, rejected ones included and marked."""
    fp32 = manifest.variant("fp32")
    metric_names = sorted({k for v in manifest.variants for k in v.metrics})
    header = (
        ["variant", "status", "params", "size MiB", "× smaller"]
        + metric_names
        + ["Δ quality", "p50 ms", "p95 ms", "p99 ms", "× faster p50"]
        + ["graph p50 ms", "× faster graph", "items/s (b=8)", "RSS MiB"]
        + ["GPU MiB", "GPU weights MiB"]
    )
    rows = []
    for v in manifest.variants:
        b1 = v.latency_at(1, 1)
        b8 = max(v.latency, key=lambda p: (p.concurrency == 1, p.batch_size), default=None)
        status = v.status + (" ★" if v.recommended else "")
        rows.append(
            [
                v.name,
                status,
                f"{v.parameters:,}",
                f"{v.size_bytes / MIB:.2f}",
                f"{fp32.size_bytes / v.size_bytes:.2f}",
                *[f"{v.metrics.get(k, float('nan')):.2f}" for k in metric_names],
                f"{-v.quality_drop:+.2f}",
                f"{b1.p50_s * 1e3:.2f}" if b1 else "-",
                f"{b1.p95_s * 1e3:.2f}" if b1 else "-",
                f"{b1.p99_s * 1e3:.2f}" if b1 else "-",
                f"{_p50_batch1(fp32) / _p50_batch1(v):.2f}",
                f"{_p50_batch1(v, graph=True) * 1e3:.2f}",
                f"{_p50_batch1(fp32, graph=True) / _p50_batch1(v, graph=True):.2f}",
                f"{b8.throughput_per_s:.1f}" if b8 else "-",
                f"{v.resident_memory_bytes / MIB:.1f}",
                f"{v.gpu_memory_bytes / MIB:.2f}"
                + (" (measured)" if v.gpu_memory_source == "measured" else ""),
                f"{v.gpu_weights_bytes / MIB:.2f}" if v.gpu_weights_bytes is not None else "-",
            ]
        )
    lines = [
        f"# {manifest.family}: variant ladder",
        "",
        f"Task `{manifest.task}`, metric `{manifest.metric.name}` "
        f"({'higher' if manifest.metric.higher_is_better else 'lower'} is better), built "
        f"{manifest.built_at} from {manifest.source}. Latency is per request of one item, "
        "concurrency 1, warm-up excluded; graph p50 is the part of it spent inside the graph "
        "(the rest is the task's pre/post-processing); ★ marks the size/latency/quality "
        "Pareto frontier. GPU memory is weights at run precision plus peak activations at "
        f"batch {manifest.max_batch_size} and the longest inputs, estimated from the graph "
        "unless marked measured; each model instance's runtime adds "
        f"{manifest.runtime_memory_bytes / MIB:.1f} MiB once (not in the table).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    notes = [f"- `{v.name}`: {'; '.join(v.notes)}" for v in manifest.variants if v.notes]
    rejected = [
        f"- `{v.name}`: {v.rejection_reason}" for v in manifest.variants if v.rejection_reason
    ]
    lines += pruning_summary(manifest)
    if notes:
        lines += ["## How each variant was made", "", *notes, ""]
    if rejected:
        lines += ["## Rejected", "", *rejected, ""]
    if skipped:
        lines += ["## Skipped", "", *(f"- {s}" for s in skipped), ""]
    return "\n".join(lines)


def pareto_plot(manifest: FamilyManifest, path: Path) -> Path:
    """Size vs p95 latency, colour = quality; rejected variants drawn as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    published = [v for v in manifest.variants if v.status == "published"]
    qualities = [v.quality for v in manifest.variants]
    low, high = min(qualities), max(qualities)
    rejected = [v for v in manifest.variants if v.status != "published"]
    for group, marker in ((published, "o"), (rejected, "x")):
        if not group:
            continue
        points = ax.scatter(
            [v.size_bytes / MIB for v in group],
            [(v.latency_at(1, 1) or v.latency[0]).p95_s * 1e3 for v in group],
            c=[v.quality for v in group],
            cmap="viridis",
            vmin=low,
            vmax=high if high > low else low + 1,
            marker=marker,
            s=[90 if v.recommended else 45 for v in group],
            edgecolors="black" if marker == "o" else None,
        )
        for v in group:
            b1 = v.latency_at(1, 1) or v.latency[0]
            ax.annotate(
                v.name,
                (v.size_bytes / MIB, b1.p95_s * 1e3),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    fig.colorbar(
        points,
        ax=ax,
        label=f"quality ({manifest.metric.name}"
        f"{'' if manifest.metric.higher_is_better else ', as 100 - value'})",
    )
    ax.set_xscale("log")
    ax.set_xlabel("graph size (MiB, log scale)")
    ax.set_ylabel("p95 latency, batch 1 (ms)")
    ax.set_title(f"{manifest.family}: size vs latency vs quality (crosses: rejected)")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(
    repository: Path, manifest: FamilyManifest, skipped: list[str] | None = None
) -> tuple[Path, Path]:
    """Write ``<family>.report.md`` and ``<family>.pareto.png`` beside the manifest."""
    md = repository / f"{manifest.family}.report.md"
    png = repository / f"{manifest.family}.pareto.png"
    pareto_plot(manifest, png)
    text = markdown(manifest, skipped) + f"\n![Pareto plot]({png.name})\n"
    md.write_text(text, encoding="utf-8")
    return md, png
