import io
import json
import wave
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.tasks.base import TaskInputError
from gateway.tasks.speech import (
    ASSET_FILE,
    FeatureSettings,
    OutputFrames,
    SpeechTask,
    decode_wav,
    log_mel,
    mel_filterbank,
)

ASSETS = Path(__file__).resolve().parents[2] / "builders" / "zoo" / "speech" / "assets"
RATE = 16000


def tone(freq_hz: float, duration_s: float, rate_hz: int = RATE, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(duration_s * rate_hz)) / rate_hz
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate_hz: int, width: int, channels: int = 1) -> bytes:
    """Encode float samples [N] or [N, C] in [-1, 1] as integer PCM."""
    frames = samples.reshape(len(samples), -1)
    frames = np.repeat(frames, channels, axis=1) if frames.shape[1] == 1 else frames
    if width == 1:
        raw = np.round(frames * 127 + 128).astype(np.uint8).tobytes()
    elif width == 3:
        ints = np.round(frames * (2**23 - 1)).astype(np.int32).reshape(-1)
        raw = np.stack([ints & 255, (ints >> 8) & 255, (ints >> 16) & 255], 1).astype(np.uint8)
        raw = raw.tobytes()
    else:
        raw = np.round(frames * (2 ** (8 * width - 1) - 1)).astype(f"<i{width}").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate_hz)
        w.writeframes(raw)
    return buf.getvalue()


def dominant_hz(x: np.ndarray, rate_hz: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * rate_hz / len(x))


# --- features ---------------------------------------------------------------------------


def test_assets_match_the_default_feature_settings() -> None:
    task = SpeechTask(ASSETS)
    assert task.settings == FeatureSettings()
    assert task.output_frames == OutputFrames()
    assert task.vocabulary[task.blank_index] == "_"
    assert len(set(task.vocabulary)) == len(task.vocabulary) == 28


@pytest.mark.parametrize("num_samples", [1, 399, 400, 401, 560, 16000, 16123])
def test_log_mel_frame_count(num_samples: int) -> None:
    s = FeatureSettings()
    feats = log_mel(np.zeros(num_samples, np.float32))
    assert feats.shape == (s.num_frames(num_samples), 80)
    assert feats.dtype == np.float32
    assert s.num_frames(num_samples) == 1 + (max(num_samples, 400) - 400) // 160


def test_log_mel_silence_is_zero_and_tones_land_in_the_right_band() -> None:
    assert not log_mel(np.zeros(4000, np.float32)).any()
    fb = mel_filterbank(FeatureSettings())
    bins_hz = np.linspace(0, RATE / 2, fb.shape[0])
    centres_hz = bins_hz[np.argmax(fb, axis=0)]
    for freq_hz in (300.0, 1000.0, 4000.0):
        feats = log_mel(tone(freq_hz, 0.5))
        assert feats.min() >= 0
        loudest = int(np.argmax(feats.mean(axis=0)))
        assert abs(centres_hz[loudest] - freq_hz) < 0.1 * freq_hz
    # A 20 dB louder tone adds log(100) in its band.
    quiet, loud = log_mel(tone(1000, 0.5, amp=0.05)), log_mel(tone(1000, 0.5, amp=0.5))
    band = int(np.argmax(loud.mean(axis=0)))
    assert loud[:, band].mean() - quiet[:, band].mean() == pytest.approx(np.log(100), abs=0.01)


def test_filterbank_rejects_bad_settings() -> None:
    with pytest.raises(ValueError):
        FeatureSettings(win_length=600)
    with pytest.raises(ValueError):
        FeatureSettings(fmax_hz=9000)


def test_output_frames_formula() -> None:
    frames = OutputFrames(kernel=5, stride=2, padding=2)
    assert [frames(t) for t in (1, 2, 3, 4, 100, 101)] == [1, 1, 2, 2, 50, 51]


# --- WAV decoding -----------------------------------------------------------------------


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_decode_wav_bit_depths(width: int) -> None:
    x = tone(440, 0.25)
    y = decode_wav(wav_bytes(x, RATE, width))
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < (0.02 if width == 1 else 1e-3)


def test_decode_wav_stereo_is_averaged() -> None:
    left, right = tone(440, 0.1, amp=0.6), tone(440, 0.1, amp=0.2)
    y = decode_wav(wav_bytes(np.stack([left, right], 1), RATE, 2, channels=2))
    np.testing.assert_allclose(y, 0.5 * (left + right), atol=1e-3)


@pytest.mark.parametrize("rate_hz", [8000, 22050, 44100, 48000])
def test_decode_wav_resamples_to_16k(rate_hz: int) -> None:
    y = decode_wav(wav_bytes(tone(1000, 0.5, rate_hz), rate_hz, 2))
    assert abs(len(y) - RATE // 2) <= 1
    assert dominant_hz(y) == pytest.approx(1000, abs=5)


def test_decode_wav_streaming_header_with_overstated_length() -> None:
    # Encoders writing to a pipe put a huge placeholder in the RIFF and data sizes.
    data = bytearray(wav_bytes(tone(440, 0.2), RATE, 2))
    data[4:8] = (0x7FFFFFFF).to_bytes(4, "little")
    data[40:44] = (0x7FFFFF00).to_bytes(4, "little")
    assert len(decode_wav(bytes(data))) == int(0.2 * RATE)


@pytest.mark.parametrize("data", [b"", b"not a wav file at all", b"RIFF\x00\x00\x00\x00WAVE"])
def test_decode_wav_rejects_garbage(data: bytes) -> None:
    with pytest.raises(TaskInputError, match="WAV"):
        decode_wav(data)


# --- the task ---------------------------------------------------------------------------


class FakeGraph:
    """Emits a fixed symbol sequence for each item's own frames and junk in the padding."""

    def __init__(self, task: SpeechTask, texts: list[str]) -> None:
        self.task, self.texts = task, texts
        self.calls: list[np.ndarray] = []

    def __call__(self, inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        feats = inputs["features"]
        self.calls.append(feats)
        batch, frames, _ = feats.shape
        out_frames = self.task.output_frames(frames)
        vocab = len(self.task.vocabulary)
        ids = np.full((batch, out_frames), self.task.vocabulary.index("z"))  # junk everywhere
        for b, text in enumerate(self.texts):
            own = self.task.output_frames(int((feats[b] != 0).any(axis=1).nonzero()[0][-1]) + 1)
            path = [0] * own
            for k, ch in enumerate(text):  # symbol, blank, symbol, blank...
                path[2 * k] = self.task.vocabulary.index(ch)
            ids[b, :own] = path
        log_probs = np.full((batch, out_frames, vocab), -20.0, np.float32)
        np.put_along_axis(log_probs, ids[..., None], 0.0, axis=-1)
        return {"log_probs": log_probs}


def open_vocabulary_task() -> SpeechTask:
    """The zoo task without its lexicon, so decoding shows the raw CTC output."""
    task = SpeechTask(ASSETS)
    task.lexicon = ()
    return task


def noise(duration_s: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(duration_s * RATE))).astype(
        np.float32
    )


def test_run_pads_once_and_decodes_each_item_over_its_own_frames() -> None:
    task = open_vocabulary_task()
    graph = FakeGraph(task, ["hi", "a  b", "ok"])
    waves = [noise(0.3, 0), noise(1.2, 1), noise(0.08, 2)]
    assert task.run(waves, graph) == ["hi", "a b", "ok"]
    (batch,) = graph.calls
    assert batch.shape == (3, FeatureSettings().num_frames(int(1.2 * RATE)), 80)
    assert batch.dtype == np.float32


def test_run_accepts_wav_bytes_and_float64() -> None:
    task = open_vocabulary_task()
    x = noise(0.5, 3)
    graph = FakeGraph(task, ["ab", "ab"])
    assert task.run([wav_bytes(x, 22050, 2), x.astype(np.float64)], graph) == ["ab", "ab"]


def test_greedy_decode_collapses_repeats_and_drops_blanks() -> None:
    task = open_vocabulary_task()
    sym = {c: i for i, c in enumerate(task.vocabulary)}
    path = ["_", "a", "a", "_", "a", "b", "b", " ", " ", "c", "_", "_", " "]
    log_probs = np.full((len(path) + 3, len(task.vocabulary)), -9.0, np.float32)
    for t, ch in enumerate(path):
        log_probs[t, sym[ch]] = 0.0
    log_probs[len(path) :, sym["z"]] = 0.0  # beyond the item's frames: ignored
    assert task.decode(log_probs, len(path)) == "aab c"


def test_empty_batch_does_not_call_the_graph() -> None:
    def graph(_: Mapping[str, Any]) -> dict[str, np.ndarray]:
        raise AssertionError("graph called")

    assert SpeechTask(ASSETS).run([], graph) == []


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (np.zeros(0, np.float32), "empty"),
        (np.zeros((2, 1600), np.float32), "mono"),
        (np.zeros(1600, np.int16), "float32"),
        (np.array([0.0, np.nan] * 800, np.float32), "NaN"),
        (np.array([0.0, np.inf] * 800, np.float32), "infinite"),
        (np.zeros(31 * RATE, np.float32), "limit is 30 s"),
        (b"RIFF....WAVEjunk", "WAV"),
        (wav_bytes(np.zeros(31 * 8000, np.float32), 8000, 1), "limit is 30 s"),
        ([0.0, 0.1], "waveform array"),
    ],
)
def test_bad_input_raises_task_input_error(item: Any, message: str) -> None:
    task = SpeechTask(ASSETS)
    graph = FakeGraph(task, ["a", "a"])
    with pytest.raises(TaskInputError, match=message):
        task.run([noise(0.2, 0), item], graph)
    assert not graph.calls  # validated before any graph call


def test_wrong_graph_output_shape_is_an_error() -> None:
    task = SpeechTask(ASSETS)

    def graph(inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return {"log_probs": np.zeros((1, inputs["features"].shape[1], 28), np.float32)}

    with pytest.raises(RuntimeError, match="log_probs"):
        task.run([noise(0.5, 0)], graph)


def test_task_reads_its_assets(tmp_path: Path) -> None:
    spec = json.loads((ASSETS / ASSET_FILE).read_text())
    spec["max_duration_s"] = 1.0
    spec["features"] = asdict(FeatureSettings(n_mels=40))
    (tmp_path / ASSET_FILE).write_text(json.dumps(spec))
    task = SpeechTask(tmp_path)
    assert task.features(noise(0.5, 0)).shape[1] == 40
    with pytest.raises(TaskInputError, match="limit is 1 s"):
        task.features(noise(1.5, 0))


def test_lexicon_decodes_to_the_likeliest_words(tmp_path: Path) -> None:
    spec = json.loads((ASSETS / ASSET_FILE).read_text())
    spec["lexicon"] = ["cab", "dog"]
    (tmp_path / ASSET_FILE).write_text(json.dumps(spec))
    task = SpeechTask(tmp_path)
    sym = {c: i for i, c in enumerate(task.vocabulary)}
    path = ["c", "a", "_", " ", "d", "o", "o", "g"]
    log_probs = np.full((len(path), len(task.vocabulary)), -9.0, np.float32)
    for t, ch in enumerate(path):
        log_probs[t, sym[ch]] = 0.0
    assert task.decode(log_probs, len(path)) == "cab dog"


def test_zoo_lexicon_decodes_its_own_words() -> None:
    task = SpeechTask(ASSETS)
    assert "seven" in task.lexicon and len(set(task.lexicon)) == len(task.lexicon)
    sym = {c: i for i, c in enumerate(task.vocabulary)}
    for word in task.lexicon:
        path = [s for c in word for s in (sym[c], task.blank_index)]
        log_probs = np.full((len(path), len(task.vocabulary)), -9.0, np.float32)
        log_probs[np.arange(len(path)), path] = 0.0
        assert task.decode(log_probs, len(path)) == word
