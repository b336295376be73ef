"""The digits zoo family: committed checkpoint and splits, ONNX parity, pruning, recovery."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from builders.zoo.digits import data, recipe
from builders.zoo.digits.family import FAMILY
from builders.zoo.digits.model import DigitsCNN, DigitsConfig, count_parameters
from builders.zoo.registry import get_family
from gateway.tasks.onnx_runner import make_session, session_runner

METRICS = json.loads((recipe.CHECKPOINT_DIR / "metrics.json").read_text())
ONE_DIGIT = 100.0 / data.EVAL_SIZE
"""One held-out digit, in percent points."""


@pytest.fixture(scope="module", autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> DigitsCNN:
    module = FAMILY.load()
    assert isinstance(module, DigitsCNN)
    return module


@pytest.fixture(scope="module")
def onnx_path(model: DigitsCNN, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("digits") / "model.onnx"
    FAMILY.export_onnx(model, path)
    return path


def test_registry_finds_family() -> None:
    family = get_family("digits")
    assert family is FAMILY
    assert (family.name, family.task, family.metric.name) == ("digits", "image-labels", "top1")
    assert family.metric.higher_is_better


def test_committed_splits() -> None:
    sizes = {name: len(data.load_split(name)[1]) for name in data.SPLITS}
    assert sizes == {"train": 1347, "eval": 450, "calibration": 200}
    images, labels = data.load_split("eval")
    assert images.dtype == np.uint8 and images.shape == (450, 8, 8)
    assert set(labels.tolist()) == set(range(10)) and images.max() == 255
    train_images, _ = data.load_split("train")
    calibration, _ = data.load_split("calibration")
    np.testing.assert_array_equal(calibration, train_images[:200])  # cut from training


def test_splits_reproduce_from_scikit_learn(tmp_path: Path) -> None:
    data.write_splits(tmp_path)
    for name in data.SPLITS:
        ours = data.load_split(name, tmp_path)
        committed = data.load_split(name)
        np.testing.assert_array_equal(ours[0], committed[0])
        np.testing.assert_array_equal(ours[1], committed[1])


def test_checkpoint_reproduces_recorded_top1(model: DigitsCNN) -> None:
    assert count_parameters(model) == METRICS["parameters"]
    scores = FAMILY.evaluate(FAMILY.torch_runner(model))
    assert scores["images"] == 450
    assert scores["top1"] == pytest.approx(METRICS["top1"], abs=ONE_DIGIT)
    assert scores["top1"] >= 98.0


def test_limit_scores_a_prefix(model: DigitsCNN) -> None:
    assert FAMILY.evaluate(FAMILY.torch_runner(model), limit=20)["images"] == 20


def test_broken_model_is_caught(model: DigitsCNN) -> None:
    broken = DigitsCNN(model.cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.fc2.weight.copy_(broken.fc2.weight.roll(1, dims=0))  # labels shifted by one
    assert FAMILY.evaluate(FAMILY.torch_runner(broken.eval()))["top1"] < 20.0


def test_onnx_runtime_matches_torch(model: DigitsCNN, onnx_path: Path) -> None:
    session = make_session(onnx_path)
    (graph_input,) = session.get_inputs()
    (graph_output,) = session.get_outputs()
    assert (graph_input.name, graph_input.type) == ("images", "tensor(float)")
    assert graph_input.shape[1:] == [1, 8, 8] and graph_output.name == "logits"
    images, _ = data.load_split("eval")
    for count in (1, 7):
        inputs = recipe.graph_inputs(images[:count])
        ort_logits = session.run(None, {"images": inputs.numpy()})[0]
        with torch.no_grad():
            torch_logits = model(inputs).numpy()
        assert ort_logits.shape == (count, 10)
        np.testing.assert_allclose(ort_logits, torch_logits, atol=1e-4, rtol=1e-4)
    scores = FAMILY.evaluate(session_runner(session))
    assert scores["top1"] == pytest.approx(METRICS["top1_onnx"], abs=ONE_DIGIT)


def test_calibration_inputs() -> None:
    batches = list(FAMILY.calibration_inputs(5))
    assert len(batches) == 5
    for batch in batches:
        assert batch["images"].shape == (1, 1, 8, 8) and batch["images"].dtype == np.float32
        assert 0.0 <= batch["images"].min() and batch["images"].max() <= 16.0
    assert len(list(FAMILY.calibration_inputs(10_000))) == data.CALIBRATION_SIZE


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prune_shrinks_model_and_graph(
    model: DigitsCNN, onnx_path: Path, tmp_path: Path, ratio: float
) -> None:
    pruned = FAMILY.prune(model, ratio)
    assert type(pruned) is DigitsCNN
    keep = 1.0 - ratio
    expected = tuple(round(c * keep) for c in model.cfg.conv_channels)
    assert pruned.cfg.conv_channels == expected
    assert pruned.cfg.hidden == round(model.cfg.hidden * keep)
    assert count_parameters(pruned) < count_parameters(model) * (1.0 - ratio)
    with torch.no_grad():
        assert pruned(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    path = tmp_path / "pruned.onnx"
    FAMILY.export_onnx(pruned, path)
    assert path.stat().st_size < onnx_path.stat().st_size * (1.0 - ratio)
    assert session_runner(make_session(path))({"images": np.zeros((2, 1, 8, 8), np.float32)})[
        "logits"
    ].shape == (2, 10)
    # The original is untouched.
    assert model.cfg == DigitsConfig()


def test_prune_keeps_largest_batch_norm_channels(model: DigitsCNN) -> None:
    gamma = model.conv1[1].weight.detach().abs()
    kept = torch.sort(torch.topk(gamma, 24).indices).values
    pruned = FAMILY.prune(model, 0.25)
    torch.testing.assert_close(pruned.conv1[0].weight, model.conv1[0].weight[kept])
    identical = FAMILY.prune(model, 0.0)
    x = recipe.graph_inputs(data.load_split("eval")[0][:16])
    with torch.no_grad():
        torch.testing.assert_close(identical(x), model(x))


@pytest.mark.parametrize("ratio", [-0.1, 1.0])
def test_prune_rejects_bad_ratio(model: DigitsCNN, ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio"):
        FAMILY.prune(model, ratio)


def test_export_rejects_other_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="DigitsCNN"):
        FAMILY.export_onnx(torch.nn.Linear(64, 10), tmp_path / "x.onnx")


def test_recover_restores_accuracy_of_half_pruned_model(model: DigitsCNN) -> None:
    pruned = FAMILY.prune(model, 0.5)
    before = FAMILY.evaluate(FAMILY.torch_runner(pruned))["top1"]
    recovered = FAMILY.recover(pruned, model, budget_s=60.0)
    after = FAMILY.evaluate(FAMILY.torch_runner(recovered))["top1"]
    assert before < 90.0  # pruning alone hurts ...
    assert after >= 97.5  # ... and the short fine-tune brings it back
    assert not recovered.training


def test_recover_budget_is_a_step_count(model: DigitsCNN) -> None:
    pruned = FAMILY.prune(model, 0.5)
    # Half a second is 50 steps: two recoveries of the same model end with the same weights.
    twice = [FAMILY.recover(copy.deepcopy(pruned), model, budget_s=0.5) for _ in range(2)]
    for a, b in zip(twice[0].state_dict().values(), twice[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(pruned.state_dict().values(), twice[0].state_dict().values(), strict=True)
    )


@pytest.mark.slow
def test_recipe_reproduces_checkpoint(tmp_path: Path) -> None:
    metrics = FAMILY.train(tmp_path)
    assert metrics["top1"] == pytest.approx(METRICS["top1"], abs=2 * ONE_DIGIT)
    assert metrics["top1_onnx"] == pytest.approx(metrics["top1"], abs=ONE_DIGIT)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        assert (tmp_path / name).exists()
    reloaded = type(FAMILY)(tmp_path).load()
    assert count_parameters(reloaded) == METRICS["parameters"]
