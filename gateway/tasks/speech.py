"""Audio → text: WAV decoding, log-mel features and CTC decoding (lexicon or greedy).

The speech graph takes ``features`` FP32 [B, T, n_mels] (zero-padded along T) and returns
``log_probs`` FP32 [B, T', V]. Its front end is one strided convolution over time, so an item
with T feature frames owns the first

    T' = (T + 2 * padding - kernel) // stride + 1

output frames; decoding stops there, so padding never leaks into a shorter item's text. The
numbers (kernel, stride, padding), the feature settings and the vocabulary are read from the
family's ``speech.json`` asset, which travels with every variant.

Features are ``log(max(mel_power, floor) / floor)``: digital silence maps to exactly 0, the
value used for padding, so a padded batch looks to the model like trailing silence.
"""

from __future__ import annotations

import functools
import io
import json
import math
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.signal import resample_poly

from gateway.tasks.base import RunGraph, TaskInputError, pad_stack
from gateway.tasks.ctc_lexicon import LexiconDecoder

FloatArray = npt.NDArray[np.float32]

MAX_SAMPLE_PEAK = 4.0
"""Largest sample magnitude accepted: well above [-1, 1] for clipped or resampled audio, far
below where the power spectrum overflows float32."""
ASSET_FILE = "speech.json"
"""Name of the task's asset file inside a family's (or variant's) assets directory."""


@dataclass(frozen=True)
class FeatureSettings:
    """Log-mel front end; the defaults are what the speech zoo model was trained with."""

    sample_rate_hz: int = 16000
    """Rate every waveform is resampled to before feature extraction."""
    n_fft: int = 512
    """FFT size; the window is zero-padded up to it."""
    win_length: int = 400
    """Hann window length in samples (25 ms at 16 kHz)."""
    hop_length: int = 160
    """Frame step in samples (10 ms at 16 kHz)."""
    n_mels: int = 80
    """Number of triangular mel filters (HTK mel scale)."""
    fmin_hz: float = 20.0
    """Lower edge of the lowest mel filter."""
    fmax_hz: float = 7600.0
    """Upper edge of the highest mel filter."""
    power_floor: float = 1e-6
    """Mel power that maps to feature value 0 (the level of digital silence)."""

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft or self.hop_length <= 0 or self.win_length <= 0:
            raise ValueError("need 0 < win_length <= n_fft and hop_length > 0")
        if not 0 <= self.fmin_hz < self.fmax_hz <= self.sample_rate_hz / 2:
            raise ValueError("need 0 <= fmin_hz < fmax_hz <= sample_rate_hz / 2")
        if self.power_floor <= 0:
            raise ValueError("power_floor must be positive")

    def num_frames(self, num_samples: int) -> int:
        """Feature frames for a waveform of ``num_samples``: 1 + (max(N, win) - win) // hop."""
        return 1 + (max(num_samples, self.win_length) - self.win_length) // self.hop_length


@dataclass(frozen=True)
class OutputFrames:
    """How the graph's time axis shrinks: T' = (T + 2 * padding - kernel) // stride + 1."""

    kernel: int = 5
    stride: int = 2
    padding: int = 2

    def __call__(self, num_frames: int) -> int:
        """Output frames of the graph for an input of ``num_frames`` feature frames."""
        return (num_frames + 2 * self.padding - self.kernel) // self.stride + 1


@functools.lru_cache(maxsize=8)
def mel_filterbank(settings: FeatureSettings) -> FloatArray:
    """Triangular HTK-mel filters as a [n_fft // 2 + 1, n_mels] matrix (cached per settings)."""

    def hz_to_mel(f_hz: float) -> float:
        return 2595.0 * math.log10(1.0 + f_hz / 700.0)

    edges_mel = np.linspace(
        hz_to_mel(settings.fmin_hz), hz_to_mel(settings.fmax_hz), settings.n_mels + 2
    )
    edges_hz = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    bins_hz = np.linspace(0.0, settings.sample_rate_hz / 2, settings.n_fft // 2 + 1)
    lower, centre, upper = edges_hz[:-2, None], edges_hz[1:-1, None], edges_hz[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    weights = np.ascontiguousarray(np.maximum(0.0, np.minimum(rising, falling)).T, dtype=np.float32)
    weights.flags.writeable = False  # shared by every caller through the cache
    return weights


def log_mel(waveform: FloatArray, settings: FeatureSettings | None = None) -> FloatArray:
    """Log-mel features of a mono waveform at ``settings.sample_rate_hz``.

    Args:
        waveform: float32 samples, nominally in [-1, 1], shape [N].
        settings: front-end settings; the zoo model's defaults when None.

    Returns:
        float32 [T, n_mels] with T = ``settings.num_frames(N)``; values are >= 0 and digital
        silence is exactly 0.
    """
    s = settings or FeatureSettings()
    x = np.asarray(waveform, dtype=np.float32)
    if x.shape[0] < s.win_length:
        x = np.pad(x, (0, s.win_length - x.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(x, s.win_length)[:: s.hop_length]
    window = _hann(s.win_length)
    spectrum = np.fft.rfft(frames * window, n=s.n_fft, axis=-1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = power @ mel_filterbank(s)
    return np.asarray(np.log(np.maximum(mel, s.power_floor) / s.power_floor), dtype=np.float32)


@functools.lru_cache(maxsize=8)
def _hann(length: int) -> FloatArray:
    """Periodic Hann window (the usual choice for STFT analysis)."""
    n = np.arange(length, dtype=np.float64)
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * math.pi * n / length), dtype=np.float32)


def resample(waveform: FloatArray, rate_hz: int, target_rate_hz: int) -> FloatArray:
    """Polyphase resampling from ``rate_hz`` to ``target_rate_hz`` (no-op when equal)."""
    if rate_hz == target_rate_hz:
        return np.asarray(waveform, dtype=np.float32)
    g = math.gcd(rate_hz, target_rate_hz)
    out = resample_poly(waveform.astype(np.float64), target_rate_hz // g, rate_hz // g)
    return np.asarray(out, dtype=np.float32)


_PCM_SCALE = {1: 128.0, 2: 32768.0, 3: 8388608.0, 4: 2147483648.0}
MAX_RESAMPLE_FACTOR = 2000
"""Largest up or down factor of a rate conversion (after dividing out the rates' GCD).

Polyphase resampling builds a filter of about 20 taps per unit of the larger factor, so an
odd rate such as 1,000,003 Hz would cost seconds (or gigabytes) for a few samples. Every
standard rate (8, 11.025, 22.05, 44.1, 48, 96, 192 kHz ...) is far below the bound."""


def _check_rate(rate_hz: int, target_rate_hz: int) -> None:
    g = math.gcd(rate_hz, target_rate_hz)
    if max(rate_hz, target_rate_hz) // g > MAX_RESAMPLE_FACTOR:
        raise TaskInputError(
            f"unsupported WAV sample rate {rate_hz} Hz: use a standard rate such as 8000, "
            "16000, 22050, 44100 or 48000 Hz"
        )


def decode_wav(
    data: bytes, target_rate_hz: int = 16000, max_duration_s: float | None = None
) -> FloatArray:
    """Decode a PCM WAV file to mono float32 in [-1, 1] at ``target_rate_hz``.

    Accepts 8-bit (unsigned), 16-, 24- and 32-bit (signed) integer PCM, any channel count
    (averaged to mono) and any sample rate (resampled). A header whose data size overstates
    the payload, as written by streaming encoders, is read up to the end of the data.

    Args:
        data: the WAV file.
        target_rate_hz: sample rate of the returned waveform.
        max_duration_s: reject longer audio before converting it (no limit when None).

    Raises:
        TaskInputError: the bytes are not a PCM WAV file this function can read, or the
            audio is longer than ``max_duration_s``.
    """
    try:
        with wave.open(io.BytesIO(data), "rb") as wav:
            channels, width, rate_hz = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            raw = wav.readframes(wav.getnframes())
    except Exception as exc:  # wave raises wave.Error, EOFError, ValueError, RuntimeError…
        raise TaskInputError(f"cannot decode WAV audio: {exc or type(exc).__name__}") from exc
    if width not in _PCM_SCALE or channels < 1 or rate_hz <= 0:
        raise TaskInputError(f"unsupported WAV format: {width * 8}-bit, {channels} channels")
    _check_rate(rate_hz, target_rate_hz)
    num_frames = len(raw) // (width * channels)
    if max_duration_s is not None and num_frames > max_duration_s * rate_hz:
        raise TaskInputError(
            f"audio is {num_frames / rate_hz:.1f} s long; the limit is {max_duration_s:g} s"
        )
    raw = raw[: num_frames * width * channels]
    if width == 1:
        ints = np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        ints = ((b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8).astype(np.float32)
    else:
        ints = np.frombuffer(raw, dtype=f"<i{width}").astype(np.float32)
    mono = (ints / _PCM_SCALE[width]).reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return resample(mono, rate_hz, target_rate_hz)


class SpeechTask:
    """Waveforms (or WAV bytes) in, transcripts out, through one speech graph."""

    def __init__(self, assets_dir: Path) -> None:
        """Read the vocabulary, feature settings and frame formula from ``speech.json``.

        Args:
            assets_dir: a directory holding ``speech.json`` (the family's or a variant's).
        """
        spec: dict[str, Any] = json.loads((Path(assets_dir) / ASSET_FILE).read_text())
        self.settings = FeatureSettings(**spec["features"])
        self.output_frames = OutputFrames(**spec["output_frames"])
        self.vocabulary: list[str] = list(spec["vocabulary"])
        self.blank_index: int = int(spec["blank_index"])
        self.max_duration_s: float = float(spec["max_duration_s"])
        self.lexicon: tuple[str, ...] = tuple(spec.get("lexicon", ()))
        """Closed vocabulary: when set, decoding returns the likeliest sequence of its words."""

    def features(self, item: FloatArray | bytes) -> FloatArray:
        """Validate one waveform (or WAV bytes) and compute its log-mel features.

        Raises:
            TaskInputError: the item is not usable audio; the message says why.
        """
        if isinstance(item, bytes):
            waveform = decode_wav(item, self.settings.sample_rate_hz, self.max_duration_s)
        else:
            waveform = item
        if not isinstance(waveform, np.ndarray):
            raise TaskInputError(f"expected a waveform array or WAV bytes, got {type(item)!r}")
        if waveform.ndim != 1:
            raise TaskInputError(f"expected mono audio of shape [samples], got {waveform.shape}")
        if waveform.dtype not in (np.float32, np.float64):
            raise TaskInputError(
                f"expected float32 samples in [-1, 1] at {self.settings.sample_rate_hz} Hz, "
                f"got dtype {waveform.dtype}"
            )
        if waveform.size == 0:
            raise TaskInputError("empty audio")
        if not np.isfinite(waveform).all():
            raise TaskInputError("audio contains NaN or infinite samples")
        peak = float(np.abs(waveform).max())
        if peak > MAX_SAMPLE_PEAK:  # e.g. int16 values sent as floats: features would overflow
            raise TaskInputError(
                f"samples must be floats in [-1, 1]; this audio peaks at {peak:g} "
                "(divide 16-bit samples by 32768)"
            )
        duration_s = waveform.size / self.settings.sample_rate_hz
        if duration_s > self.max_duration_s:
            raise TaskInputError(
                f"audio is {duration_s:.1f} s long; the limit is {self.max_duration_s:g} s"
            )
        return log_mel(waveform.astype(np.float32, copy=False), self.settings)

    def decode(self, log_probs: npt.NDArray[Any], num_frames: int) -> str:
        """Decode one item's first ``num_frames`` output frames.

        With a lexicon, the best-scoring sequence of lexicon words (see ``ctc_lexicon``);
        without one, CTC greedy decoding (open vocabulary).
        """
        if self.lexicon:
            decoder = _lexicon_decoder(tuple(self.vocabulary), self.blank_index, self.lexicon)
            return decoder.decode(log_probs[:num_frames])
        best = np.argmax(log_probs[:num_frames], axis=-1)
        keep = np.ones_like(best, dtype=bool)
        keep[1:] = best[1:] != best[:-1]
        chars = [self.vocabulary[i] for i in best[keep] if i != self.blank_index]
        return " ".join("".join(chars).split())

    def run(self, waveforms: list[FloatArray | bytes], run_graph: RunGraph) -> list[str]:
        """Transcribe a batch: features per item, one padded graph call, per-item decoding.

        Args:
            waveforms: mono float32 waveforms at 16 kHz, or WAV files as bytes.
            run_graph: runs the speech graph (``features`` in, ``log_probs`` out).

        Returns:
            One transcript per item, lower-case words separated by single spaces.

        Raises:
            TaskInputError: an item is not usable audio.
        """
        if not waveforms:
            return []
        feats = [self.features(w) for w in waveforms]
        batch = pad_stack(feats, 0.0)
        log_probs = np.asarray(run_graph({"features": batch})["log_probs"])
        expected = (len(feats), self.output_frames(batch.shape[1]), len(self.vocabulary))
        if log_probs.shape != expected:
            raise RuntimeError(
                f"speech graph returned log_probs {log_probs.shape}, want {expected}"
            )
        return [
            self.decode(log_probs[i], self.output_frames(f.shape[0])) for i, f in enumerate(feats)
        ]


@functools.lru_cache(maxsize=8)
def _lexicon_decoder(
    vocabulary: tuple[str, ...], blank_index: int, lexicon: tuple[str, ...]
) -> LexiconDecoder:
    """One decoder per (vocabulary, lexicon): building the word loop is done once."""
    return LexiconDecoder(vocabulary, blank_index, lexicon)
