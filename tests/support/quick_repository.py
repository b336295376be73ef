"""A real model repository built quickly from the committed zoo checkpoints, for tests.

Same builders as ``builders build-demo``, with a small evaluation subset, short profiles and
short recovery fine-tunes, so the whole four-family ladder builds in a few minutes.
"""

from __future__ import annotations

from pathlib import Path

from builders.build import BuildResult, build_family
from builders.report import write_report
from builders.spec import VARIANT_KINDS, BuildSpec, ProfileSettings
from builders.zoo.registry import get_family

QUICK_PROFILE = ProfileSettings(
    batch_sizes=(1, 4),
    concurrency_levels=(1, 2),
    warmup_runs=1,
    min_runs=5,
    max_runs=40,
    time_per_point_s=0.2,
)
EVAL_LIMIT = {"digits": 150, "vision": 40, "speech": 4, "translation": 60}
FAMILIES = ("digits", "vision", "speech", "translation")
VARIANTS = {"speech": ("fp32", "int8")}
"""Whisper's requests take seconds: its quick ladder is fp32 and int8, scored on the first 4
utterances of each set."""


def quick_spec(family: str, repository: Path) -> BuildSpec:
    """Every variant kind, one pruning ratio, small eval subset, short profile."""
    return BuildSpec(
        family=family,
        repository=repository,
        variants=VARIANTS.get(family, VARIANT_KINDS),
        pruning_ratios=(0.5,),
        recover_budget_s=8.0,
        # A loose budget: with a short recovery the pruned variants must still be published,
        # because the gateway tests route between them.
        max_quality_drop=25.0,
        eval_limit=EVAL_LIMIT[family],
        calibration_items=64,
        max_batch_size=8,
        profile=QUICK_PROFILE,
    )


def build_quick_repository(
    repository: Path, families: tuple[str, ...] = FAMILIES
) -> dict[str, BuildResult]:
    """Build ``families`` into ``repository``; returns each family's build result."""
    results = {}
    for name in families:
        result = build_family(quick_spec(name, repository), get_family(name))
        write_report(repository, result.manifest, result.skipped)
        results[name] = result
    return results
