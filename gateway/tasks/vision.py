"""Image → labels: image decoding, resize/crop/normalise, and top-k softmax labels.

One task serves every image family; what differs per family is read from two assets in the
family's (or variant's) assets directory:

- ``preprocess.json``: colour mode, resize and crop, per-channel mean/std and the graph's
  tensor names (see :class:`ImagePreprocess`);
- ``labels.txt``: one class label per line, in logit order.

The graph takes ``images`` FP32 [B, C, S, S] and returns ``logits`` FP32 [B, num_labels].
Pixels are in 0..255 before normalisation, so ``(pixel - mean) / std`` covers both
EfficientNet-Lite's ``(x - 127) / 128`` and the digits' 0..16 scale (mean 0, std 255 / 16).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps

from gateway.tasks.base import RunGraph, TaskInputError

PREPROCESS_FILE = "preprocess.json"
"""Preprocessing settings inside a family's (or variant's) assets directory."""
LABELS_FILE = "labels.txt"
"""Class labels, one per line in logit order, inside the assets directory."""

DEFAULT_TOP_K = 5
"""Labels returned per image when the request does not say."""
MAX_IMAGE_BYTES = 32 * 1024 * 1024
"""Largest encoded image accepted by :func:`decode_image`."""
MAX_IMAGE_PIXELS = 40_000_000
"""Largest decoded image (width × height) accepted, encoded or as a tensor."""

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}
_CHANNELS = {"rgb": 3, "gray": 1}

UInt8Image = npt.NDArray[np.uint8]
Labels = list[tuple[str, float]]


def open_image(
    data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> Image.Image:
    """Decode an encoded image (JPEG, PNG, …) into an RGB PIL image.

    The EXIF orientation is applied and an alpha channel is dropped; the first frame of an
    animation is used. Kept as a PIL image, so resizing follows without a copy to numpy.

    Args:
        data: The encoded file's bytes.
        max_bytes: Largest accepted encoded size.
        max_pixels: Largest accepted width × height, checked before the pixels are decoded.

    Raises:
        TaskInputError: The bytes are empty, too large or not a decodable image.
    """
    if not data:
        raise TaskInputError("could not decode image: empty input")
    if len(data) > max_bytes:
        raise TaskInputError(f"could not decode image: {len(data)} bytes exceeds {max_bytes}")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TaskInputError(
                    f"could not decode image: {width}x{height} exceeds {max_pixels} pixels"
                )
            # exif_transpose copies an upright image whole; only a turned one needs it.
            turned = image.getexif().get(ExifTags.Base.Orientation, 1) != 1
            rgb = (ImageOps.exif_transpose(image) if turned else image).convert("RGB")
    except TaskInputError:
        raise
    except Exception as exc:  # PIL's decoders raise many types (OSError, SyntaxError, EOFError…)
        raise TaskInputError(f"could not decode image: {exc}") from exc
    return rgb


def decode_image(
    data: bytes, max_bytes: int = MAX_IMAGE_BYTES, max_pixels: int = MAX_IMAGE_PIXELS
) -> UInt8Image:
    """Decode an encoded image into a uint8 HWC RGB array (see :func:`open_image`).

    Returns:
        An array of shape (H, W, 3) and dtype uint8.

    Raises:
        TaskInputError: The bytes are empty, too large or not a decodable image.
    """
    return np.asarray(open_image(data, max_bytes, max_pixels), dtype=np.uint8)


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes one row of the graph's input tensor."""

    color: str
    """``"rgb"`` (3 input channels) or ``"gray"`` (1 channel, ITU-R 601 luma)."""
    size_px: int
    """Side of the square the graph takes."""
    resize_shorter_px: int | None
    """Resize the shorter side to this (keeping aspect), then centre-crop ``size_px``;
    ``None`` stretches the whole image to ``size_px`` × ``size_px``."""
    resample: str
    """PIL filter: ``nearest``, ``box`` (area average), ``bilinear``, ``bicubic`` or ``lanczos``."""
    mean: tuple[float, ...]
    """Per-channel value subtracted from pixels in 0..255."""
    std: tuple[float, ...]
    """Per-channel divisor applied after the mean."""
    input_name: str = "images"
    """Name of the graph's input tensor."""
    output_name: str = "logits"
    """Name of the graph's output tensor."""

    def __post_init__(self) -> None:
        if self.color not in _CHANNELS:
            raise ValueError(f"color must be one of {sorted(_CHANNELS)}, got {self.color!r}")
        if self.resample not in _RESAMPLE:
            raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got {self.resample!r}")
        if self.size_px <= 0:
            raise ValueError("size_px must be positive")
        if self.resize_shorter_px is not None and self.resize_shorter_px < self.size_px:
            raise ValueError("resize_shorter_px must be at least size_px")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values for color {self.color!r}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")

    @property
    def channels(self) -> int:
        """Channels of the graph input: 3 for RGB, 1 for gray."""
        return _CHANNELS[self.color]

    @classmethod
    def from_json(cls, path: Path) -> ImagePreprocess:
        """Read settings from a JSON object; unknown keys are an error, not silence."""
        raw: dict[str, Any] = json.loads(path.read_text())
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
        for key in ("mean", "std"):
            if key in raw:
                raw[key] = tuple(float(v) for v in raw[key])
        return cls(**raw)


def load_labels(path: Path) -> list[str]:
    """Read one label per line; blank lines are not allowed, so line i is class i."""
    labels = path.read_text(encoding="utf-8").splitlines()
    if not labels or any(not label.strip() for label in labels):
        raise ValueError(f"{path}: labels must be non-empty, one per line")
    return labels


def check_image(image: Any, index: int = 0) -> UInt8Image:
    """Validate a task-level image: uint8, shape (H, W) or (H, W, C) with C in 1, 3, 4.

    Raises:
        TaskInputError: The array has the wrong type, dtype, rank, channel count or size.
    """
    where = f"image {index}"
    if not isinstance(image, np.ndarray):
        raise TaskInputError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TaskInputError(f"{where}: expected dtype uint8, got {image.dtype}")
    if image.ndim not in (2, 3):
        raise TaskInputError(f"{where}: expected shape (H, W, C), got rank {image.ndim}")
    if image.ndim == 3 and image.shape[2] not in (1, 3, 4):
        raise TaskInputError(f"{where}: expected 1, 3 or 4 channels, got {image.shape[2]}")
    height, width = image.shape[:2]
    if height == 0 or width == 0:
        raise TaskInputError(f"{where}: empty image of shape {image.shape}")
    if height * width > MAX_IMAGE_PIXELS:
        raise TaskInputError(f"{where}: {width}x{height} exceeds {MAX_IMAGE_PIXELS} pixels")
    return image


def _to_pil(image: UInt8Image) -> Image.Image:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(image))


class ImageTask:
    """Images in, top-k (label, softmax score) lists out, through one graph call per batch."""

    def __init__(self, assets_dir: Path) -> None:
        """Load ``preprocess.json`` and ``labels.txt`` from ``assets_dir``."""
        self.settings = ImagePreprocess.from_json(assets_dir / PREPROCESS_FILE)
        self.labels = load_labels(assets_dir / LABELS_FILE)

    def preprocess_one(self, image: UInt8Image | Image.Image) -> npt.NDArray[np.float32]:
        """One validated uint8 array or decoded image → normalised float32 CHW."""
        s = self.settings
        source = image if isinstance(image, Image.Image) else _to_pil(image)
        pil = source.convert("RGB" if s.color == "rgb" else "L")
        resample = _RESAMPLE[s.resample]
        if s.resize_shorter_px is None:
            pil = pil.resize((s.size_px, s.size_px), resample)
        else:
            width, height = pil.size
            scale = s.resize_shorter_px / min(width, height)
            new_w = max(s.size_px, round(width * scale))
            new_h = max(s.size_px, round(height * scale))
            pil = pil.resize((new_w, new_h), resample)
            left, top = (new_w - s.size_px) // 2, (new_h - s.size_px) // 2
            pil = pil.crop((left, top, left + s.size_px, top + s.size_px))
        pixels = np.asarray(pil, dtype=np.float32).reshape(s.size_px, s.size_px, s.channels)
        mean = np.asarray(s.mean, dtype=np.float32)
        std = np.asarray(s.std, dtype=np.float32)
        return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))

    def preprocess(self, images: Sequence[Any]) -> npt.NDArray[np.float32]:
        """Validate and preprocess a batch into the graph input [B, C, S, S].

        Raises:
            TaskInputError: The batch is empty or an image is not a valid uint8 HWC array.
        """
        if len(images) == 0:
            raise TaskInputError("no images given")
        checked = [
            image if isinstance(image, Image.Image) else check_image(image, i)
            for i, image in enumerate(images)
        ]
        return np.stack([self.preprocess_one(image) for image in checked])

    def postprocess(self, logits: npt.NDArray[Any], top_k: int = DEFAULT_TOP_K) -> list[Labels]:
        """Logits [B, num_labels] → per image the ``top_k`` labels by softmax score."""
        if logits.ndim != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(
                f"graph returned logits of shape {logits.shape}, expected [B, {len(self.labels)}]"
            )
        k = min(_check_top_k(top_k), len(self.labels))
        shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
        probs = np.exp(shifted)
        probs /= probs.sum(axis=1, keepdims=True)
        # A stable sort keeps ties in label order, so results are deterministic.
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [
            [(self.labels[j], float(row[j])) for j in idx]
            for row, idx in zip(probs, order, strict=True)
        ]

    def run(
        self,
        images: Sequence[UInt8Image | Image.Image],
        run_graph: RunGraph,
        top_k: int = DEFAULT_TOP_K,
    ) -> list[Labels]:
        """Classify a batch of images with one graph call.

        Args:
            images: uint8 arrays of shape (H, W, C) with C in 1, 3, 4 (or (H, W)), or images
                from :func:`open_image`.
            run_graph: Runs the family's graph on ``{input_name: [B, C, S, S]}``.
            top_k: Labels per image; capped at the number of classes.

        Returns:
            Per image, ``(label, probability)`` pairs, most probable first.

        Raises:
            TaskInputError: An image or ``top_k`` is invalid.
        """
        _check_top_k(top_k)
        batch = self.preprocess(images)
        outputs = run_graph({self.settings.input_name: batch})
        if self.settings.output_name not in outputs:
            raise ValueError(f"graph returned no {self.settings.output_name!r} output")
        logits = np.asarray(outputs[self.settings.output_name])
        if logits.shape[0] != len(images):
            raise ValueError(f"graph returned {logits.shape[0]} rows for {len(images)} images")
        return self.postprocess(logits, top_k)


def _check_top_k(top_k: Any) -> int:
    if isinstance(top_k, bool) or not isinstance(top_k, int | np.integer) or top_k < 1:
        raise TaskInputError(f"top_k must be a positive integer, got {top_k!r}")
    return int(top_k)
