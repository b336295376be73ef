"""The Whisper task: audio decoding, features, token decoding, windows and the decode loop."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile

from builders.zoo.speech import data
from builders.zoo.speech.assets import ASSETS_DIR
from builders.zoo.speech.sources import packaged_model_dir
from gateway.tasks.audio import audio_seconds, decode_audio
from gateway.tasks.base import TaskInputError
from gateway.tasks.bpe import ByteLevelDecoder
from gateway.tasks.log_mel import log_mel
from gateway.tasks.speech import WhisperTask, window_bounds


def encode(waveform: np.ndarray, rate_hz: int, fmt: str, subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, rate_hz, format=fmt, subtype=subtype)
    return buffer.getvalue()


def resampled(waveform: np.ndarray, rate_hz: int) -> np.ndarray:
    from gateway.tasks.audio import resample

    return resample(waveform, 16000, rate_hz)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return data.real_recordings()[0].waveform


@pytest.mark.parametrize("seconds", [0.01, 0.3, 2.0, 7.1])
def test_features_equal_the_reference_implementation(seconds, speech):
    faster_whisper = pytest.importorskip("faster_whisper.feature_extractor")
    waveform = speech[: int(seconds * 16000)]
    want = faster_whisper.FeatureExtractor()(waveform)
    got = log_mel(waveform)
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-5


@pytest.mark.parametrize(
    ("fmt", "subtype", "rate_hz"),
    [
        ("WAV", "PCM_16", 16000),
        ("WAV", "PCM_24", 44100),
        ("WAV", "FLOAT", 8000),
        ("FLAC", None, 48000),
        ("OGG", "OPUS", 48000),
        ("OGG", "VORBIS", 22050),
    ],
)
def test_encoded_audio_at_any_rate_decodes_to_16khz(fmt, subtype, rate_hz, speech):
    clip = speech[:32000]
    payload = encode(resampled(clip, rate_hz), rate_hz, fmt, subtype)
    assert audio_seconds(payload) == pytest.approx(2.0, abs=0.02)
    decoded = decode_audio(payload)
    assert decoded.dtype == np.float32
    assert abs(decoded.size - clip.size) <= 400
    n = min(decoded.size, clip.size)
    if subtype not in ("OPUS", "VORBIS"):  # lossy codecs shift phase; the others match
        assert np.corrcoef(decoded[:n], clip[:n])[0, 1] > 0.99


def test_waveform_size_is_its_sample_count():
    assert audio_seconds(np.zeros(24000, np.float32)) == 1.5


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (b"", "empty audio"),
        (b"RIFFjunk-not-a-wav", "cannot decode audio"),
        (b"\x00" * 64, "cannot decode audio"),
        (np.array([0.1, np.nan], np.float32), "NaN"),
        (np.zeros(0, np.float32), "empty audio"),
        (np.zeros(16000, np.int16), "float32 samples"),
        (np.zeros((2, 16000), np.float32), "mono audio"),
        (np.zeros(16000 * 601, np.float32), "limit is 600 s"),
        (np.full(16000, 1000.0, np.float32), "peaks at 1000"),  # int16 values sent as floats
    ],
)
def test_bad_audio_is_refused_with_a_clear_message(item, message):
    task = WhisperTask(ASSETS_DIR)
    with pytest.raises(TaskInputError, match=message):
        task.waveform(item)


def test_files_at_an_absurd_rate_are_refused():
    task = WhisperTask(ASSETS_DIR)
    with pytest.raises(TaskInputError, match="unsupported sample rate 1000 Hz"):
        task.waveform(encode(np.zeros(1000, np.float32), 1000, "WAV", "PCM_16"))
    # In range, but converting it to 16 kHz would take a filter of millions of taps.
    with pytest.raises(TaskInputError, match="unsupported sample rate 100003 Hz"):
        task.waveform(encode(np.zeros(400, np.float32), 100003, "WAV", "PCM_16"))


def test_too_long_files_are_refused_from_their_header():
    task = WhisperTask(ASSETS_DIR)
    payload = encode(np.zeros(8000 * 601, np.float32), 8000, "WAV", "PCM_16")
    with pytest.raises(TaskInputError, match="601.0 s long"):
        task.waveform(payload)


def test_byte_level_decoding_equals_the_tokenizers_library():
    tokenizers = pytest.importorskip("tokenizers")
    reference = tokenizers.Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json"))
    ours = ByteLevelDecoder.from_file(ASSETS_DIR / "vocabulary.txt")
    assert len(ours) == 51864
    ids = reference.encode(
        " Mr. Dashwood — café, naïve 55 «quoted» 日本", add_special_tokens=False
    ).ids
    assert ours.decode(ids) == reference.decode(ids)
    rng = np.random.default_rng(0)
    for _ in range(20):
        sample = rng.integers(0, 50256, size=12).tolist()
        assert ours.decode(sample) == reference.decode(sample)


def test_committed_assets_are_the_packaged_model_s():
    from builders.zoo.speech.assets import write_assets

    tokens = (packaged_model_dir() / "vocabulary.txt").read_text(encoding="utf-8")
    assert (ASSETS_DIR / "vocabulary.txt").read_text(encoding="utf-8").rstrip("\n") == (
        tokens.rstrip("\n")
    )
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        write_assets(packaged_model_dir(), Path(tmp))
        assert (Path(tmp) / "whisper.json").read_text() == (ASSETS_DIR / "whisper.json").read_text()


def test_windows_cover_long_audio_and_cut_in_quiet_places():
    frames = 7201  # 72 s
    loudness = np.ones(frames, np.float32)
    loudness[2700:2720] = 0.0  # a pause 27 s in
    bounds = window_bounds(frames, loudness)
    assert bounds[0][0] == 0 and bounds[-1][1] == frames - 1
    assert all(b[0] == a[1] for a, b in zip(bounds, bounds[1:], strict=False))
    assert all(stop - start <= 3000 for start, stop in bounds)
    assert 2700 <= bounds[0][1] <= 2720
    assert window_bounds(300) == [(0, 299)]


def test_wire_contract_sizes_items_in_audio_seconds_without_decoding(speech):
    from gateway.errors import InvalidRequestError
    from gateway.taskio import AudioIO

    io_ = AudioIO(ASSETS_DIR)
    flac = encode(resampled(speech[:48000], 44100), 44100, "FLAC")
    assert io_.item_size(flac) == pytest.approx(3.0, abs=0.01)
    assert io_.item_size(speech[:8000]) == 0.5
    with pytest.raises(InvalidRequestError, match="cannot decode audio"):
        io_.item_size(b"not audio at all")
