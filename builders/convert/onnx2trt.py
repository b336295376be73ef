"""ONNX → TensorRT engine (``model.plan``), only where TensorRT and an NVIDIA GPU exist.

TensorRT is imported lazily: everything else in the builders works without it, and a build
asked for engines on a machine without them says why they were skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

TrtPrecision = Literal["fp16", "int8", "fp16-sparse"]


def tensorrt_unavailable_reason() -> str | None:
    """None when engines can be built here, else a sentence saying why not."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT is not installed (pip install 'variant-gateway[tensorrt]')"
    try:
        import torch
    except ImportError:
        return "torch is needed to find the GPU"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    return None


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    precision: TrtPrecision,
    max_batch_size: int,
    input_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]],
    calibrator: Any | None = None,
    workspace_bytes: int = 1 << 30,
) -> Path:
    """Build and serialise an engine.

    Args:
        onnx_path: the fp32 graph.
        plan_path: where the serialised engine goes.
        precision: fp16, int8 (needs ``calibrator``: a ``tensorrt.IInt8EntropyCalibrator2``)
            or fp16-sparse (2:4 structured sparsity kernels where the weights allow).
        max_batch_size: largest batch of the optimisation profile.
        input_shapes: per input, (min, opt, max) shapes including the batch dimension.
        calibrator: int8 calibrator.
        workspace_bytes: builder workspace limit.
    """
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot build a TensorRT engine: {reason}")
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise ValueError("int8 engines need a calibrator")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    if precision == "fp16-sparse":
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in input_shapes.items():
        if high[0] > max_batch_size:
            raise ValueError(f"{name}: max shape batch {high[0]} exceeds {max_batch_size}")
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name}")
    plan_path.write_bytes(bytes(engine))
    return plan_path
