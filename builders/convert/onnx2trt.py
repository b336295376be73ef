"""ONNX → TensorRT engine (``model.plan``), only where TensorRT and an NVIDIA GPU exist.

Written against TensorRT 10's Python API: the ONNX parser fills an (always explicit-batch)
network, one optimisation profile covers the family's batch and length ranges, fp16 is always
allowed, int8 calibrates with an entropy calibrator on the family's calibration split (the
split ONNX int8 uses), and 2:4-sparse weights let the builder pick sparse kernels.

TensorRT is imported lazily, inside the functions that call it: everything else in the
builders works without it, and a build asked for engines on a machine without them says
once why they were skipped (:func:`tensorrt_unavailable_reason`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from builders.convert.calibration import CalibrationSet, entropy_calibrator
from builders.zoo.api import ShapeRange

EnginePrecision = Literal["fp16", "int8"]
DEFAULT_WORKSPACE_BYTES = 1 << 30
"""Builder workspace limit: tactics needing more scratch memory are not considered."""


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else a sentence saying why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'variant-gateway[tensorrt]')"
    try:
        import torch
    except ImportError:
        return "torch is needed to reach the GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


@dataclass(frozen=True)
class EngineSpec:
    """How to build one engine.

    Attributes:
        precision: ``fp16``, or ``int8`` (with fp16 where a layer has no int8 kernel; needs
            calibration data).
        shapes: The optimisation profile: per network input, its shape range.
        sparse_weights: Let TensorRT use 2:4 sparse kernels where the weights are 2:4.
        workspace_bytes: Builder workspace limit.
    """

    precision: EnginePrecision
    shapes: Mapping[str, ShapeRange] = field(default_factory=dict)
    sparse_weights: bool = False
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES

    def __post_init__(self) -> None:
        if self.precision not in ("fp16", "int8"):
            raise ValueError(f"engine precision must be fp16 or int8, got {self.precision!r}")
        if not self.shapes:
            raise ValueError("an engine needs the shape range of every input")
        if self.workspace_bytes <= 0:
            raise ValueError("workspace_bytes must be positive")

    def check_inputs(self, names: Collection[str]) -> None:
        """Check that the profile names exactly the network's inputs.

        Raises:
            ValueError: An input without a shape range, or a range for no input.
        """
        missing = sorted(set(names) - set(self.shapes))
        extra = sorted(set(self.shapes) - set(names))
        if missing or extra:
            raise ValueError(
                f"optimisation profile does not match the network: inputs without a range "
                f"{missing}, ranges for no input {extra}"
            )


def _profile(builder: Any, shapes: Mapping[str, ShapeRange]) -> Any:
    profile = builder.create_optimization_profile()
    for name, shape in shapes.items():
        profile.set_shape(name, shape.min, shape.opt, shape.max)
    return profile


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    spec: EngineSpec,
    calibration: CalibrationSet | None = None,
) -> Path:
    """Build ``onnx_path`` into a serialised engine at ``plan_path``.

    Args:
        onnx_path: An fp32 ONNX graph (2:4-sparse already, for ``spec.sparse_weights``).
        plan_path: Where the engine goes.
        spec: Precision, optimisation profile, sparsity, workspace.
        calibration: int8 calibration batches (required for ``int8``).

    Raises:
        RuntimeError: TensorRT or the GPU is missing, or TensorRT failed to parse or build.
        ValueError: int8 without calibration data, or a profile that misses an input.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    if spec.precision == "int8" and calibration is None:
        raise ValueError("int8 engines need calibration data")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10 networks are always explicit-batch
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    spec.check_inputs([network.get_input(i).name for i in range(network.num_inputs)])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(_profile(builder, spec.shapes))
    if spec.precision == "int8":
        assert calibration is not None
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = entropy_calibrator(calibration)
        # Calibration runs at one shape: the padded calibration batches'.
        config.set_calibration_profile(_profile(builder, calibration.profile()))
    if spec.sparse_weights:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}")
    plan_path.write_bytes(bytes(serialized))
    return plan_path
