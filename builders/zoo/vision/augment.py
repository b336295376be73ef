"""Seeded image augmentations (PIL + numpy) for the vision eval set and distillation.

All functions take and return uint8 RGB arrays (H, W, 3) and draw randomness only from the
``numpy.random.Generator`` they are given, so a seed fixes the output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

UInt8Image = npt.NDArray[np.uint8]
Rng = np.random.Generator


def to_rgb(image: npt.NDArray[Any]) -> UInt8Image:
    """Any scikit-image sample (bool, float 0..1, uint8; gray, RGB, RGBA) → uint8 RGB."""
    array: UInt8Image
    if image.dtype == bool:
        array = image.astype(np.uint8) * np.uint8(255)
    elif image.dtype.kind == "f":
        array = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    else:
        array = image.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 4:  # composite over white, as the image would be shown
        alpha = array[:, :, 3:4].astype(np.float32) / 255.0
        blended = array[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        array = np.round(blended).astype(np.uint8)
    return np.ascontiguousarray(array[:, :, :3])


def resize_shorter(image: UInt8Image, shorter_px: int) -> UInt8Image:
    """Resize keeping the aspect ratio so the shorter side is ``shorter_px``."""
    height, width = image.shape[:2]
    scale = shorter_px / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


def random_resized_crop(
    image: UInt8Image,
    rng: Rng,
    out_px: int,
    scale: tuple[float, float] = (0.1, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> UInt8Image:
    """Crop a random box (area fraction in ``scale``, aspect in ``ratio``), resize to a square."""
    height, width = image.shape[:2]
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:  # fall back to the central square
        h = w = min(height, width)
        top, left = (height - h) // 2, (width - w) // 2
    crop = Image.fromarray(image[top : top + h, left : left + w])
    return np.asarray(crop.resize((out_px, out_px), Image.Resampling.BICUBIC))


def hflip(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Mirror left-right."""
    return np.ascontiguousarray(image[:, ::-1])


def brightness(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Scale brightness by 0.5..1.5."""
    pil = ImageEnhance.Brightness(Image.fromarray(image)).enhance(rng.uniform(0.5, 1.5))
    return np.asarray(pil)


def contrast(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Scale contrast by 0.4..1.6."""
    return np.asarray(ImageEnhance.Contrast(Image.fromarray(image)).enhance(rng.uniform(0.4, 1.6)))


def saturation(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Scale colour saturation by 0..2 (0 is grayscale)."""
    return np.asarray(ImageEnhance.Color(Image.fromarray(image)).enhance(rng.uniform(0.0, 2.0)))


def hue_shift(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Rotate the hue by a random amount."""
    hsv = np.asarray(Image.fromarray(image).convert("HSV")).copy()
    hsv[:, :, 0] = (hsv[:, :, 0].astype(np.int32) + int(rng.integers(20, 236))) % 256
    return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))


def gamma(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Apply a gamma curve with exponent 0.5..2."""
    exponent = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    table = np.round(255.0 * (np.arange(256) / 255.0) ** exponent).astype(np.uint8)
    curved: UInt8Image = table[image]
    return curved


def blur(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Gaussian blur with radius 1..3 px."""
    radius = rng.uniform(1.0, 3.0)
    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


def low_resolution(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Downscale by 3..6× and back, losing detail like a small thumbnail."""
    height, width = image.shape[:2]
    factor = rng.uniform(3.0, 6.0)
    small = Image.fromarray(image).resize(
        (max(1, round(width / factor)), max(1, round(height / factor))), Image.Resampling.BILINEAR
    )
    return np.asarray(small.resize((width, height), Image.Resampling.BILINEAR))


def noise(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Add Gaussian pixel noise with sigma 5..20."""
    noisy = image.astype(np.float32) + rng.normal(0.0, rng.uniform(5.0, 20.0), image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def rotate(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Rotate by 90, 180 or 270 degrees."""
    return np.ascontiguousarray(np.rot90(image, int(rng.integers(1, 4))))


def zoom_out(image: UInt8Image, rng: Rng) -> UInt8Image:
    """Shrink to 40..75 % and place on a flat background of a random gray."""
    height, width = image.shape[:2]
    factor = rng.uniform(0.4, 0.75)
    small = Image.fromarray(image).resize(
        (max(1, round(width * factor)), max(1, round(height * factor))), Image.Resampling.BICUBIC
    )
    canvas = Image.new("RGB", (width, height), (int(rng.integers(0, 256)),) * 3)
    canvas.paste(small, ((width - small.width) // 2, (height - small.height) // 2))
    return np.asarray(canvas)


PHOTOMETRIC: tuple[Callable[[UInt8Image, Rng], UInt8Image], ...] = (
    brightness,
    contrast,
    saturation,
    hue_shift,
    gamma,
    blur,
    low_resolution,
    noise,
    rotate,
    zoom_out,
)
"""Changes applied on top of a crop, one per eval image (cycled) or at random in training."""


def colour_jitter(image: UInt8Image, rng: Rng, strength: float = 0.3) -> UInt8Image:
    """Mild random brightness, contrast and saturation, as in classifier training."""
    pil = Image.fromarray(image)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        pil = enhancer(pil).enhance(rng.uniform(1.0 - strength, 1.0 + strength))
    return np.asarray(pil)


def dead_leaves(rng: Rng, size_px: int, textures: Sequence[UInt8Image]) -> UInt8Image:
    """A dead-leaves picture: occluding shapes with power-law sizes, as in natural scenes.

    Radii follow p(r) ∝ r⁻³ (the scale invariance of natural images); shapes are filled with
    patches of ``textures`` or with flat colours picked from them, so colours stay natural.
    """

    def patch(width: int, height: int) -> Image.Image:
        source = textures[int(rng.integers(len(textures)))]
        crop = random_resized_crop(source, rng, max(width, height), scale=(0.02, 0.5))
        return Image.fromarray(crop).resize((width, height))

    def colour() -> tuple[int, ...]:
        source = textures[int(rng.integers(len(textures)))]
        y, x = (int(rng.integers(n)) for n in source.shape[:2])
        return tuple(int(c) for c in source[y, x])

    canvas = patch(size_px, size_px)
    r_min, r_max = size_px / 24, size_px / 2
    for _ in range(int(rng.integers(20, 60))):
        u = rng.random()  # inverse-CDF sample of p(r) ∝ r⁻³ on [r_min, r_max]
        radius = 1.0 / math.sqrt(u / r_max**2 + (1.0 - u) / r_min**2)
        aspect = math.exp(rng.normal(0.0, 0.4))
        width, height = max(2, round(2 * radius * aspect)), max(2, round(2 * radius / aspect))
        left = int(rng.integers(-width // 2, size_px - width // 2))
        top = int(rng.integers(-height // 2, size_px - height // 2))
        mask = Image.new("L", (width, height), 0)
        draw = ImageDraw.Draw(mask)
        shape = draw.ellipse if rng.random() < 0.6 else draw.rectangle
        shape((0, 0, width - 1, height - 1), fill=255)
        if rng.random() < 0.5:
            fill = patch(width, height)
        else:
            fill = Image.new("RGB", (width, height), colour())
        canvas.paste(fill, (left, top), mask)
    return np.asarray(canvas.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0))))
