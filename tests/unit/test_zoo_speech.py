import copy
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from builders.zoo.api import ZooFamily
from builders.zoo.registry import get_family
from builders.zoo.speech import corpus, evaluation, training
from builders.zoo.speech.family import CONV_PRUNE_FACTOR, FAMILY, MAX_CONV_PRUNE
from builders.zoo.speech.model import SpeechConfig, SpeechCTC, count_parameters
from builders.zoo.speech.pruning import prune
from gateway.tasks.base import pad_stack
from gateway.tasks.speech import SpeechTask, log_mel

CHECKPOINT = Path(__file__).resolve().parents[2] / "builders" / "zoo" / "speech" / "checkpoint"
METRICS = json.loads((CHECKPOINT / "metrics.json").read_text())
SUBSET = int(METRICS["subset_utterances"])

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> SpeechCTC:
    module = FAMILY.load()
    assert isinstance(module, SpeechCTC)
    return module


@pytest.fixture(scope="module")
def eval_features() -> list[np.ndarray]:
    split = corpus.load_split("eval")
    return [log_mel(split.waveform(i)) for i in range(24)]


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory: pytest.TempPathFactory, model: SpeechCTC) -> Path:
    path = tmp_path_factory.mktemp("speech") / "model.onnx"
    FAMILY.export_onnx(model, path)
    return path


def test_registry_returns_a_zoo_family() -> None:
    family: ZooFamily = get_family("speech")
    assert family is FAMILY
    assert family.metric.name == "wer" and not family.metric.higher_is_better
    assert (family.assets_dir / "speech.json").is_file()


def test_recorded_metrics_describe_a_trained_model_onnx_reproduces() -> None:
    # The committed checkpoint: 7.0 % WER on held-out voices with lexicon decoding (30.6 %
    # spelling freely).
    assert METRICS["wer"] <= 8.0
    assert METRICS["wer"] < METRICS["open_vocabulary_wer"]
    assert abs(METRICS["onnx_wer"] - METRICS["wer"]) <= 0.5
    assert METRICS["eval_utterances"] == len(corpus.load_split("eval")) >= 300
    assert 0.5e6 <= METRICS["params"] <= 0.7e6


def test_checkpoint_reproduces_recorded_subset_metric(model: SpeechCTC) -> None:
    assert count_parameters(model) == METRICS["params"]
    got = FAMILY.evaluate(FAMILY.torch_runner(model), limit=SUBSET)
    assert got["wer"] == pytest.approx(METRICS["subset_wer"], abs=0.5)
    assert got["cer"] == pytest.approx(METRICS["subset_cer"], abs=0.3)


def test_a_broken_model_fails_the_metric(model: SpeechCTC) -> None:
    broken = SpeechCTC(model.config).eval()  # untrained weights
    got = FAMILY.evaluate(FAMILY.torch_runner(broken), limit=16)
    assert got["wer"] > METRICS["subset_wer"] + 50


def test_onnx_graph_is_single_file_with_dynamic_axes(onnx_path: Path) -> None:
    assert [p.name for p in onnx_path.parent.iterdir()] == ["model.onnx"]
    graph = onnx.load(str(onnx_path)).graph
    (inp,), (out,) = graph.input, graph.output
    assert inp.name == "features" and out.name == "log_probs"
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[1], str) and dims[2] == 80
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_onnx_matches_torch(
    model: SpeechCTC, onnx_path: Path, eval_features: list[np.ndarray], batch_size: int
) -> None:
    batch = pad_stack(eval_features[:batch_size])
    ort_out = evaluation.onnx_runner(onnx_path)({"features": batch})["log_probs"]
    torch_out = FAMILY.torch_runner(model)({"features": batch})["log_probs"]
    assert ort_out.shape == (batch_size, model.config.output_frames(batch.shape[1]), 28)
    np.testing.assert_allclose(ort_out, torch_out, atol=2e-3)


def test_onnx_reproduces_recorded_subset_metric(onnx_path: Path) -> None:
    got = FAMILY.evaluate(evaluation.onnx_runner(onnx_path), limit=SUBSET)
    assert got["wer"] == pytest.approx(METRICS["subset_onnx_wer"], abs=0.5)


def test_padding_does_not_change_transcripts(model: SpeechCTC) -> None:
    split = corpus.load_split("eval")
    task = FAMILY.speech_task()
    run = FAMILY.torch_runner(model)
    waves = [split.waveform(i) for i in range(16)]
    alone = [task.run([w], run)[0] for w in waves]
    longest = max(range(16), key=lambda i: len(waves[i]))
    padded = [task.run([w, waves[longest]], run)[0] for w in waves]
    assert sum(a == b for a, b in zip(alone, padded, strict=True)) >= 15


def test_calibration_inputs() -> None:
    batches = list(FAMILY.calibration_inputs(5))
    assert len(batches) == 5
    for b in batches:
        assert set(b) == {"features"}
        assert b["features"].dtype == np.float32 and b["features"].shape[::2] == (1, 80)
    assert len(list(FAMILY.calibration_inputs(10_000))) == len(corpus.load_split("calibration"))


def test_prune_at_zero_keeps_the_function(
    model: SpeechCTC, eval_features: list[np.ndarray]
) -> None:
    same = FAMILY.prune(model, 0.0)
    assert isinstance(same, SpeechCTC) and same.config == model.config
    x = torch.from_numpy(pad_stack(eval_features[:4]))
    with torch.no_grad():
        torch.testing.assert_close(same(x), model(x))


def test_prune_removes_dead_units_exactly() -> None:
    torch.manual_seed(0)
    config = SpeechConfig(conv_channels=16, hidden_sizes=(8, 6), vocab_size=5)
    full = SpeechCTC(config).eval()
    gru0, gru1 = full.gru_layers()
    with torch.no_grad():
        # Nothing reads conv channels 0-3, forward units 2, 7 and backward units 0, 5 of
        # layer 0, or forward unit 1 and backward unit 0 of layer 1: removing them is exact.
        for w in (gru0.weight_ih_l0, gru0.weight_ih_l0_reverse):
            w[:, :4] = 0
        gru0.weight_hh_l0[:, [2, 7]] = 0
        gru0.weight_hh_l0_reverse[:, [0, 5]] = 0
        for w in (gru1.weight_ih_l0, gru1.weight_ih_l0_reverse):
            w[:, [2, 7, 8 + 0, 8 + 5]] = 0
        gru1.weight_hh_l0[:, 1] = 0
        gru1.weight_hh_l0_reverse[:, 0] = 0
        full.head.weight[:, [1, 6]] = 0
    x = torch.rand(3, 40, 80) * 5
    pruned = prune(full, 0.2, [x])
    assert pruned.config.conv_channels == 13 and pruned.config.hidden_sizes == (6, 5)
    with torch.no_grad():
        # Ratio 0.2 removes 3 of 16 channels (all dead), 2 of 8 and 1 of 6 units per direction.
        torch.testing.assert_close(pruned(x), full(x), atol=1e-5, rtol=1e-5)
    # The conv may lose a larger share than the GRUs: 4 of 16 (all dead) is exact too.
    conv_only = prune(full, 0.0, [x], conv_ratio=0.25)
    assert conv_only.config.conv_channels == 12 and conv_only.config.hidden_sizes == (8, 6)
    with torch.no_grad():
        torch.testing.assert_close(conv_only(x), full(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_prune_is_smaller_and_runs(
    model: SpeechCTC, onnx_path: Path, tmp_path: Path, eval_features: list[np.ndarray], ratio: float
) -> None:
    pruned = FAMILY.prune(model, ratio)
    assert type(pruned) is SpeechCTC
    assert count_parameters(pruned) < count_parameters(model) * (1 - ratio) + 1000
    conv_ratio = min(CONV_PRUNE_FACTOR * ratio, MAX_CONV_PRUNE)
    assert pruned.config.conv_channels == round(model.config.conv_channels * (1 - conv_ratio))
    hidden = tuple(round(h * (1 - ratio)) for h in model.config.hidden_sizes)
    assert pruned.config.hidden_sizes == hidden
    path = tmp_path / "pruned.onnx"
    FAMILY.export_onnx(pruned, path)
    assert path.stat().st_size < onnx_path.stat().st_size * (1 - ratio) + 50_000
    batch = pad_stack(eval_features[:4])
    out = evaluation.onnx_runner(path)({"features": batch})["log_probs"]
    assert out.shape == (4, model.config.output_frames(batch.shape[1]), 28)
    np.testing.assert_allclose(
        out, FAMILY.torch_runner(pruned)({"features": batch})["log_probs"], atol=2e-3
    )
    assert np.allclose(np.exp(out).sum(-1), 1.0, atol=1e-4)


@pytest.mark.slow
def test_recover_improves_a_pruned_model_reproducibly(model: SpeechCTC) -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    pruned = FAMILY.prune(model, 0.5)
    before = FAMILY.evaluate(FAMILY.torch_runner(pruned), limit=48)["wer"]
    recovered = FAMILY.recover(copy.deepcopy(pruned), model, budget_s=15.0)
    assert isinstance(recovered, SpeechCTC) and recovered.config == pruned.config
    after = FAMILY.evaluate(FAMILY.torch_runner(recovered), limit=48)["wer"]
    assert after < before
    # The budget is a step count, not a clock: the same budget gives the same weights.
    short = [FAMILY.recover(copy.deepcopy(pruned), model, budget_s=1.0) for _ in range(2)]
    for a, b in zip(short[0].state_dict().values(), short[1].state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_splits_keep_eval_voices_unseen() -> None:
    train_voices = set(corpus.voices(held_out=False))
    eval_voices = set(corpus.voices(held_out=True))
    assert not train_voices & eval_voices
    assert not set(corpus.TRAIN_VARIANTS) & set(corpus.HELD_OUT_VARIANTS)
    split = corpus.load_split("eval")
    assert set(split.voices) <= eval_voices
    for voice in split.voices:
        accent, _, variant = voice.partition("+")
        assert accent in corpus.HELD_OUT_ACCENTS or variant in corpus.HELD_OUT_VARIANTS
    assert set(corpus.load_split("calibration").voices) <= train_voices
    known = set(corpus.words()) | set(corpus.DIGIT_WORDS)
    assert all(set(t.split()) <= known for t in split.transcripts)
    sizes = sum((corpus.DATA_DIR / f"{n}.npz").stat().st_size for n in ("eval", "calibration"))
    assert sizes < 10e6


def test_synthesis_is_deterministic_and_trimmed() -> None:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    utt = corpus.Utterance("4 2 7", "four two seven", "en-us+f3", 160, 50)
    a, b = corpus.synthesize(utt), corpus.synthesize(utt)
    np.testing.assert_array_equal(a, b)
    assert 0.5 < len(a) / corpus.SAMPLE_RATE_HZ < 3.0
    # Leading and trailing silence is cut to at most the margin (80 ms) around the speech.
    loud = np.flatnonzero(np.abs(a) > 1e-3)
    margin = int(0.08 * corpus.SAMPLE_RATE_HZ)
    assert loud.size and loud[0] <= margin and len(a) - loud[-1] <= margin


def test_lexicon_is_the_corpus_vocabulary() -> None:
    assert FAMILY.speech_task().lexicon == corpus.DIGIT_WORDS + corpus.words()


def test_word_list_is_clean() -> None:
    words = corpus.words()
    assert len(words) == len(set(words)) >= 200
    assert all(w.isalpha() and w.islower() for w in words)
    assert not set(words) & set(corpus.DIGIT_WORDS)


def test_parallel_synthesis_gives_the_same_examples() -> None:
    task = FAMILY.make_task(FAMILY.assets_dir)
    assert isinstance(task, SpeechTask)
    one = training.make_examples(6, 11, task, log=lambda _: None, workers=1)
    two = training.make_examples(6, 11, task, log=lambda _: None, workers=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.targets, b.targets)


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [("", "", 0), ("abc", "", 3), ("kitten", "sitting", 3), ("seven", "seven", 0), ("ab", "ba", 2)],
)
def test_edit_distance(a: str, b: str, distance: int) -> None:
    assert evaluation.edit_distance(a, b) == distance == evaluation.edit_distance(b, a)
