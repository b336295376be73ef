"""Build settings, validated when they are made."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VARIANT_KINDS = ("fp32", "fp16", "int8", "pruned", "pruned-int8")


@dataclass(frozen=True)
class ProfileSettings:
    """How each variant is timed. Warm-up runs are excluded from the percentiles."""

    batch_sizes: tuple[int, ...] = (1, 4, 8)
    """Items per request for the concurrency-1 points."""
    concurrency_levels: tuple[int, ...] = (1, 2, 4)
    """Client threads issuing batch-1 requests at once."""
    warmup_runs: int = 3
    min_runs: int = 10
    max_runs: int = 200
    time_per_point_s: float = 1.5
    """Stop timing a point after this long once min_runs are done."""
    intra_op_threads: int = 1
    """ONNX Runtime threads per session, fixed so variants compare fairly."""

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must be positive, got {self.batch_sizes}")
        if not self.concurrency_levels or min(self.concurrency_levels) < 1:
            raise ValueError(f"concurrency_levels must be positive: {self.concurrency_levels}")
        if not 1 <= self.min_runs <= self.max_runs:
            raise ValueError(f"need 1 <= min_runs <= max_runs: {self.min_runs}, {self.max_runs}")
        if self.warmup_runs < 0 or self.time_per_point_s <= 0 or self.intra_op_threads < 1:
            raise ValueError("warmup_runs >= 0, time_per_point_s > 0, intra_op_threads >= 1")


@dataclass(frozen=True)
class BuildSpec:
    """What to build for one family and where to put it."""

    family: str
    repository: Path
    variants: tuple[str, ...] = VARIANT_KINDS
    """Variant kinds; ``pruned`` and ``pruned-int8`` expand to one per pruning ratio."""
    pruning_ratios: tuple[float, ...] = (0.25, 0.5)
    recover_budget_s: float | None = None
    """Length of each pruned model's recovery fine-tune, in seconds of a 2-core CPU; None
    takes the family's own default. Each family turns it into a fixed number of steps (its
    steps per second on such a machine), so a build makes the same pruned models on any
    machine, only sooner or later."""
    max_quality_drop: float | None = None
    """Points of the primary metric a variant may lose against fp32 and still be published;
    None takes the family's own budget (``max_quality_drop`` on the family, else 2)."""
    eval_limit: int | None = None
    """Evaluate on the first N held-out items only (None: the whole set)."""
    calibration_items: int = 256
    """int8 calibration inputs (fewer when the family's calibration split is smaller): with
    64, EfficientNet-Lite0's min/max activation ranges still missed its tails."""
    max_batch_size: int = 8
    profile: ProfileSettings = field(default_factory=ProfileSettings)
    tensorrt: bool = True
    """Also build TensorRT engines mirroring the ONNX rungs (``builders.engines``) where
    TensorRT and a CUDA GPU exist; elsewhere the build says once why they were skipped."""

    def __post_init__(self) -> None:
        unknown = [v for v in self.variants if v not in VARIANT_KINDS]
        if unknown:
            raise ValueError(f"unknown variant kinds {unknown}; choose from {VARIANT_KINDS}")
        if "fp32" not in self.variants:
            raise ValueError("fp32 is the baseline every other variant is measured against")
        if any(not 0 < r < 1 for r in self.pruning_ratios):
            raise ValueError(f"pruning ratios must lie in (0, 1), got {self.pruning_ratios}")
        if (self.recover_budget_s or 0.0) < 0 or (self.max_quality_drop or 0.0) < 0:
            raise ValueError("recover_budget_s and max_quality_drop must be >= 0")
        if self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"eval_limit must be >= 1, got {self.eval_limit}")
        if self.calibration_items < 1:
            raise ValueError(f"calibration_items must be >= 1, got {self.calibration_items}")
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")


def pruned_name(ratio: float, int8: bool = False) -> str:
    """Variant name of a pruning ratio: ``pruned-25`` or ``pruned-25-int8``."""
    name = f"pruned-{round(ratio * 100):02d}"
    return f"{name}-int8" if int8 else name
