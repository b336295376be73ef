"""Image → labels task: decoding, preprocessing per family, top-k post-processing, errors."""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from gateway.tasks.base import TaskInputError
from gateway.tasks.vision import (
    DEFAULT_TOP_K,
    ImagePreprocess,
    ImageTask,
    decode_image,
    load_labels,
)

ROOT = Path(__file__).resolve().parents[2]
VISION_ASSETS = ROOT / "builders" / "zoo" / "vision" / "assets"
DIGITS_ASSETS = ROOT / "builders" / "zoo" / "digits" / "assets"


def encode(image: np.ndarray, fmt: str = "PNG", **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def fixed_logits(rows: np.ndarray) -> Any:
    """A graph runner that records its inputs and answers with the given logits."""
    seen: list[Mapping[str, np.ndarray]] = []

    def run(inputs: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        seen.append(inputs)
        return {"logits": rows[: len(inputs["images"])]}

    run.seen = seen  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def vision() -> ImageTask:
    return ImageTask(VISION_ASSETS)


@pytest.fixture(scope="module")
def digits() -> ImageTask:
    return ImageTask(DIGITS_ASSETS)


# --- decode_image -------------------------------------------------------------------------


def test_decode_png_and_jpeg_to_uint8_rgb() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    png = decode_image(encode(image))
    assert png.dtype == np.uint8 and png.shape == (20, 30, 3)
    np.testing.assert_array_equal(png, image)  # lossless
    jpeg = decode_image(encode(image, "JPEG", quality=95))
    assert jpeg.shape == (20, 30, 3)


def test_decode_gray_and_rgba_become_rgb() -> None:
    gray = np.full((5, 7), 200, np.uint8)
    out = decode_image(encode(gray))
    assert out.shape == (5, 7, 3) and np.all(out == 200)
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 128
    out = decode_image(encode(rgba))
    assert out.shape == (4, 4, 3) and np.all(out[..., 0] == 255)


def test_decode_applies_exif_orientation() -> None:
    image = Image.new("RGB", (40, 10), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert decode_image(buffer.getvalue()).shape == (40, 10, 3)


@pytest.mark.parametrize(
    ("data", "kwargs", "message"),
    [
        (b"", {}, "empty input"),
        (b"definitely not an image", {}, "could not decode image"),
        (encode(np.zeros((8, 8, 3), np.uint8), "JPEG")[:40], {}, "could not decode image"),
        (encode(np.zeros((8, 8, 3), np.uint8)), {"max_bytes": 10}, "exceeds 10"),
        (encode(np.zeros((30, 40, 3), np.uint8)), {"max_pixels": 1000}, "40x30 exceeds 1000"),
    ],
    ids=["empty", "garbage", "truncated", "too-many-bytes", "too-many-pixels"],
)
def test_decode_errors(data: bytes, kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(TaskInputError, match="could not decode image") as info:
        decode_image(data, **kwargs)
    assert message in str(info.value)


# --- preprocessing ------------------------------------------------------------------------


def test_vision_settings_follow_efficientnet_lite(vision: ImageTask) -> None:
    s = vision.settings
    assert (s.color, s.size_px, s.resize_shorter_px, s.resample) == ("rgb", 224, 256, "bicubic")
    assert s.mean == (127.0,) * 3 and s.std == (128.0,) * 3
    labels = vision.labels
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[281] == "tabby cat" and labels[967] == "espresso"


def test_vision_preprocess_shape_and_normalisation(vision: ImageTask) -> None:
    images = [np.full((300, 500, 3), 255, np.uint8), np.full((224, 224, 3), 127, np.uint8)]
    batch = vision.preprocess(images)
    assert batch.dtype == np.float32 and batch.shape == (2, 3, 224, 224)
    np.testing.assert_allclose(batch[0], 128 / 128, atol=1e-6)
    np.testing.assert_allclose(batch[1], 0.0, atol=1e-6)


def test_vision_preprocess_centre_crops_wide_images(vision: ImageTask) -> None:
    # Red | green | blue thirds: resizing to a 256-px height and cropping 224 keeps the middle.
    wide = np.zeros((256, 768, 3), np.uint8)
    wide[:, :256, 0] = wide[:, 256:512, 1] = wide[:, 512:, 2] = 255
    chw = vision.preprocess([wide])[0]
    assert np.all(chw[1] > 0.99) and np.all(chw[0] < -0.98) and np.all(chw[2] < -0.98)


def test_vision_accepts_gray_and_rgba_arrays(vision: ImageTask) -> None:
    gray = np.full((50, 60), 30, np.uint8)
    gray3 = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([gray3, np.full((50, 60, 1), 7, np.uint8)], axis=2)
    batch = vision.preprocess([gray, gray[:, :, None], gray3, rgba])
    for other in batch[1:]:
        np.testing.assert_allclose(other, batch[0], atol=1e-6)


def test_digits_preprocess_matches_sklearn_scale(digits: ImageTask) -> None:
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3] = 255
    digit[1, 1] = 51  # 51 / 255 · 16 = 3.2
    batch = digits.preprocess([digit])
    assert batch.shape == (1, 1, 8, 8) and batch.dtype == np.float32
    assert batch[0, 0, 3, 3] == pytest.approx(16.0) and batch[0, 0, 1, 1] == pytest.approx(3.2)
    assert batch[0, 0, 0, 0] == 0.0


def test_digits_resizes_larger_images_by_area(digits: ImageTask) -> None:
    # A 32×32 RGB digit (white on black) averaged over 4×4 blocks, as scikit-learn's were.
    big = np.zeros((32, 32, 3), np.uint8)
    big[8:24, 12:16] = 255
    out = digits.preprocess([big])[0, 0]
    assert out[3, 3] == pytest.approx(16.0) and out[0, 0] == 0.0
    assert out.shape == (8, 8)


# --- post-processing and run --------------------------------------------------------------


def test_run_returns_sorted_top_k_softmax(digits: ImageTask) -> None:
    logits = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [9, 0, 0, 0, 0, 0, 0, 0, 0, 0]], float)
    run = fixed_logits(logits.astype(np.float32))
    results = digits.run([np.zeros((8, 8), np.uint8)] * 2, run, top_k=3)
    assert [label for label, _ in results[0]] == ["9", "8", "7"]
    assert results[1][0][0] == "0" and results[1][0][1] > 0.99
    expected = np.exp(9.0) / np.exp(np.arange(10.0)).sum()
    assert results[0][0][1] == pytest.approx(expected)
    assert set(run.seen[0]) == {"images"} and run.seen[0]["images"].shape == (2, 1, 8, 8)


def test_top_k_default_and_cap(digits: ImageTask) -> None:
    run = fixed_logits(np.zeros((1, 10), np.float32))
    image = [np.zeros((8, 8), np.uint8)]
    assert len(digits.run(image, run)[0]) == DEFAULT_TOP_K
    everything = digits.run(image, run, top_k=50)[0]
    assert len(everything) == 10
    assert [label for label, _ in everything] == [str(d) for d in range(10)]  # ties: label order
    assert sum(score for _, score in everything) == pytest.approx(1.0)


def test_softmax_is_stable_for_large_logits(vision: ImageTask) -> None:
    logits = np.full((1, 1000), -1e4, np.float32)
    logits[0, 5] = 1e4
    (result,) = vision.postprocess(logits, top_k=2)
    assert result[0] == (vision.labels[5], 1.0) and result[1][1] == 0.0


@pytest.mark.parametrize("top_k", [0, -1, True, 2.5, "3"])
def test_bad_top_k(digits: ImageTask, top_k: Any) -> None:
    run = fixed_logits(np.zeros((1, 10), np.float32))
    with pytest.raises(TaskInputError, match="top_k"):
        digits.run([np.zeros((8, 8), np.uint8)], run, top_k=top_k)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), "dtype uint8"),
        (np.zeros((8, 8, 3), np.int64), "dtype uint8"),
        (np.zeros(64, np.uint8), "rank 1"),
        (np.zeros((1, 8, 8, 3), np.uint8), "rank 4"),
        (np.zeros((8, 8, 2), np.uint8), "got 2"),
        (np.zeros((8, 8, 5), np.uint8), "got 5"),
        (np.zeros((0, 8, 3), np.uint8), "empty image"),
        (np.zeros((8, 0), np.uint8), "empty image"),
        ([[0, 1], [2, 3]], "numpy array"),
    ],
    ids=["float", "int64", "rank1", "rank4", "2ch", "5ch", "no-rows", "no-cols", "list"],
)
def test_invalid_images(vision: ImageTask, image: Any, message: str) -> None:
    run = fixed_logits(np.zeros((2, 1000), np.float32))
    with pytest.raises(TaskInputError, match=message) as info:
        vision.run([np.zeros((4, 4, 3), np.uint8), image], run)
    assert "image 1" in str(info.value)
    assert not run.seen  # nothing reached the graph


def test_empty_batch(vision: ImageTask) -> None:
    with pytest.raises(TaskInputError, match="no images"):
        vision.run([], fixed_logits(np.zeros((1, 1000), np.float32)))


def test_graph_output_mismatch_is_not_a_client_error(digits: ImageTask) -> None:
    image = [np.zeros((8, 8), np.uint8)]
    with pytest.raises(ValueError, match="expected") as info:
        digits.run(image, fixed_logits(np.zeros((1, 7), np.float32)))
    assert not isinstance(info.value, TaskInputError)
    with pytest.raises(ValueError, match="no 'logits' output"):
        digits.run(image, lambda inputs: {"scores": np.zeros((1, 10), np.float32)})


# --- asset files --------------------------------------------------------------------------


def write_settings(tmp_path: Path, **changes: Any) -> Path:
    raw = json.loads((DIGITS_ASSETS / "preprocess.json").read_text())
    path = tmp_path / "preprocess.json"
    path.write_text(json.dumps({**raw, **changes}))
    return path


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"colour": "rgb"}, "unknown keys"),
        ({"color": "cmyk"}, "color must be"),
        ({"resample": "magic"}, "resample must be"),
        ({"mean": [0.0, 0.0, 0.0]}, "mean and std need 1"),
        ({"std": [0.0]}, "positive"),
        ({"resize_shorter_px": 4}, "at least size_px"),
        ({"size_px": 0}, "positive"),
    ],
)
def test_invalid_settings(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePreprocess.from_json(write_settings(tmp_path, **changes))


def test_labels_file_rejects_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("cat\n\ndog\n")
    with pytest.raises(ValueError, match="non-empty"):
        load_labels(path)
    path.write_text("cat\ndog\n")
    assert load_labels(path) == ["cat", "dog"]
