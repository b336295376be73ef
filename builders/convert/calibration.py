"""int8 calibration data for TensorRT: the family's calibration split, at one fixed shape.

TensorRT calibrates a dynamic-shape network at its calibration profile's one shape, so the
calibration batches (the same split ONNX int8 is calibrated on) are zero-padded to the
largest shape among them, which is what the task does with a batch of uneven items: silence
after short audio, padding ids after short texts. Batches of another row count than the
first are left out, so every batch feeds the same profile.

:class:`CalibrationSet` is plain numpy (tested without TensorRT);
:func:`entropy_calibrator` wraps it in a ``tensorrt.IInt8EntropyCalibrator2`` that copies
each batch to the GPU through torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from builders.zoo.api import ShapeRange

Batch = Mapping[str, npt.NDArray[Any]]


def pad_to(array: npt.NDArray[Any], shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """``array`` zero-padded at the end of every axis to ``shape``.

    Raises:
        ValueError: ``array`` is larger than ``shape`` on some axis, or of another rank.
    """
    if array.ndim != len(shape) or any(a > s for a, s in zip(array.shape, shape, strict=True)):
        raise ValueError(f"cannot pad shape {array.shape} to {shape}")
    widths = [(0, s - a) for a, s in zip(array.shape, shape, strict=True)]
    return np.pad(array, widths)


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration batches of one fixed shape per input.

    Attributes:
        shapes: The shape of each input in every batch (batch dimension first).
        batches: The padded batches.
        dropped: Batches left out because their row count differed from the first's.
    """

    shapes: dict[str, tuple[int, ...]]
    batches: list[dict[str, npt.NDArray[Any]]]
    dropped: int = 0

    @classmethod
    def from_batches(
        cls, batches: Iterable[Batch], ranges: Mapping[str, ShapeRange]
    ) -> CalibrationSet:
        """Pad ``batches`` to their largest shape, within the inputs' shape ranges.

        Raises:
            ValueError: No batches, a batch lacks an input, or a batch does not fit the
                ranges (the optimisation profile must cover what calibration feeds).
        """
        kept: list[Batch] = []
        dropped = 0
        for batch in batches:
            missing = set(ranges) - set(batch)
            if missing:
                raise ValueError(f"calibration batch lacks inputs {sorted(missing)}")
            rows = {int(batch[name].shape[0]) for name in ranges}
            if kept and rows != {int(kept[0][name].shape[0]) for name in ranges}:
                dropped += 1
                continue
            kept.append(batch)
        if not kept:
            raise ValueError("no calibration batches")
        shapes = {
            name: tuple(int(v) for v in np.max([b[name].shape for b in kept], axis=0))
            for name in ranges
        }
        for name, shape in shapes.items():
            low, high = ranges[name].min, ranges[name].max
            if len(shape) != len(high) or any(
                not lo <= s <= hi for lo, s, hi in zip(low, shape, high, strict=True)
            ):
                raise ValueError(f"{name}: calibration shape {shape} is outside {low}..{high}")
        padded = [{name: pad_to(b[name], shapes[name]) for name in ranges} for b in kept]
        return cls(shapes, padded, dropped)

    def profile(self) -> dict[str, ShapeRange]:
        """The calibration profile: each input at its one calibration shape."""
        return {name: ShapeRange(shape, shape, shape) for name, shape in self.shapes.items()}


def entropy_calibrator(calibration: CalibrationSet, cache: Path | None = None) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` feeding ``calibration`` from GPU buffers.

    Needs TensorRT and torch with CUDA (imported here, lazily). The batch is in the input
    shapes (explicit batch), so the calibrator's own batch size is 1.
    """
    import tensorrt as trt
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # required by TensorRT's trampoline
            self._batches = iter(calibration.batches)
            self._device: dict[str, Any] = {}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            batch = next(self._batches, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                tensor = torch.from_numpy(np.ascontiguousarray(batch[name])).cuda()
                self._device[name] = tensor  # kept alive until the next batch
                pointers.append(int(tensor.data_ptr()))
            torch.cuda.synchronize()
            return pointers

        def read_calibration_cache(self) -> bytes | None:
            if cache is not None and cache.is_file():
                return cache.read_bytes()
            return None

        def write_calibration_cache(self, data: Any) -> None:
            if cache is not None:
                cache.write_bytes(bytes(data))

    return EntropyCalibrator()
