"""Audio in: encoded files (WAV, FLAC, Ogg/Vorbis, Ogg/Opus, ...) or raw waveforms, checked.

Encoded audio is read with libsndfile (``soundfile``), mixed down to mono and resampled to
the model's rate with a polyphase filter. Its length is read from the header first, so an
over-long file is refused before a sample is decoded; a waveform's length is its sample
count. Everything a client can get wrong raises :class:`TaskInputError` with a message
that says what was wrong.
"""

from __future__ import annotations

import io
import math

import numpy as np
import numpy.typing as npt
import soundfile
from scipy.signal import resample_poly

from gateway.tasks.base import TaskInputError

FloatArray = npt.NDArray[np.float32]

SAMPLE_RATE_HZ = 16000
"""Rate of every waveform the speech models see; raw waveforms must already be at it."""
MIN_RATE_HZ, MAX_RATE_HZ = 4000, 384000
"""Sample rates an encoded file may have; outside them it is refused, not resampled."""
MAX_AUDIO_S = 600.0
"""Longest audio one item may hold (10 minutes), encoded or raw. Longer audio is refused
with INVALID_ARGUMENT; up to this, speech is transcribed window by window in one request."""
MAX_RESAMPLE_FACTOR = 2000
"""Largest up or down factor of a rate conversion (after dividing out the rates' GCD).

Polyphase resampling builds a filter of about 20 taps per unit of the larger factor, so an
odd rate such as 100,003 Hz would cost seconds (or gigabytes) for a few samples. Every
standard rate (8, 11.025, 22.05, 44.1, 48, 96, 192 kHz ...) is far below the bound."""
MAX_SAMPLE_PEAK = 4.0
"""Largest sample magnitude accepted: well above [-1, 1] for clipped or resampled audio, far
below where the power spectrum overflows float32."""


def audio_seconds(item: FloatArray | bytes) -> float:
    """Length of one audio item in seconds, cheaply: the header of a file, or sample count.

    Raises:
        TaskInputError: The bytes are not an audio file libsndfile can read.
    """
    if isinstance(item, bytes):
        return _info(item).duration_s
    return float(np.asarray(item).shape[-1]) / SAMPLE_RATE_HZ


class _Header:
    def __init__(self, frames: int, rate_hz: int, channels: int) -> None:
        self.frames, self.rate_hz, self.channels = frames, rate_hz, channels

    @property
    def duration_s(self) -> float:
        return self.frames / self.rate_hz if self.rate_hz > 0 else 0.0


def _info(data: bytes) -> _Header:
    if not data:
        raise TaskInputError("empty audio file")
    try:
        info = soundfile.info(io.BytesIO(data))
    except Exception as exc:  # any failure to read client bytes is bad input, never a 500
        raise TaskInputError(
            f"cannot decode audio (WAV, FLAC or Ogg expected): {exc or type(exc).__name__}"
        ) from exc
    return _Header(int(info.frames), int(info.samplerate), int(info.channels))


def resample(waveform: FloatArray, rate_hz: int, target_rate_hz: int) -> FloatArray:
    """Polyphase resampling from ``rate_hz`` to ``target_rate_hz`` (no-op when equal)."""
    if rate_hz == target_rate_hz:
        return np.asarray(waveform, dtype=np.float32)
    g = math.gcd(rate_hz, target_rate_hz)
    out = resample_poly(waveform.astype(np.float64), target_rate_hz // g, rate_hz // g)
    return np.asarray(out, dtype=np.float32)


def decode_audio(data: bytes, max_duration_s: float = MAX_AUDIO_S) -> FloatArray:
    """Decode an audio file to mono float32 in [-1, 1] at :data:`SAMPLE_RATE_HZ`.

    Any format and rate libsndfile reads (WAV PCM/float, FLAC, Ogg Vorbis/Opus, AIFF, ...);
    channels are averaged.

    Raises:
        TaskInputError: Not decodable, empty, or longer than ``max_duration_s``.
    """
    header = _info(data)
    g = math.gcd(header.rate_hz, SAMPLE_RATE_HZ)
    if (
        not MIN_RATE_HZ <= header.rate_hz <= MAX_RATE_HZ
        or max(header.rate_hz, SAMPLE_RATE_HZ) // g > MAX_RESAMPLE_FACTOR
    ):
        raise TaskInputError(
            f"unsupported sample rate {header.rate_hz} Hz; audio files must be "
            f"{MIN_RATE_HZ} to {MAX_RATE_HZ} Hz at a standard rate such as 8000, 16000, "
            "22050, 44100 or 48000 Hz"
        )
    if header.duration_s > max_duration_s:
        raise TaskInputError(
            f"audio is {header.duration_s:.1f} s long; the limit is {max_duration_s:g} s"
        )
    try:
        samples, rate_hz = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except Exception as exc:  # any failure to read client bytes is bad input, never a 500
        raise TaskInputError(f"cannot decode audio: {exc or type(exc).__name__}") from exc
    if samples.shape[0] == 0:
        raise TaskInputError("empty audio: the file holds no samples")
    mono = samples.mean(axis=1, dtype=np.float32)
    return check_waveform(resample(mono, int(rate_hz), SAMPLE_RATE_HZ), max_duration_s)


def check_waveform(waveform: object, max_duration_s: float = MAX_AUDIO_S) -> FloatArray:
    """Validate a raw waveform: mono 16 kHz floats, finite, within ±4, non-empty, short enough.

    Raises:
        TaskInputError: What is wrong with it.
    """
    if not isinstance(waveform, np.ndarray):
        raise TaskInputError(f"expected a waveform array or audio bytes, got {type(waveform)!r}")
    if waveform.ndim != 1:
        raise TaskInputError(f"expected mono audio of shape [samples], got {waveform.shape}")
    if waveform.dtype not in (np.float32, np.float64):
        raise TaskInputError(
            f"expected float32 samples in [-1, 1] at {SAMPLE_RATE_HZ} Hz, got {waveform.dtype}"
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
    duration_s = waveform.size / SAMPLE_RATE_HZ
    if duration_s > max_duration_s:
        raise TaskInputError(f"audio is {duration_s:.1f} s long; the limit is {max_duration_s:g} s")
    return waveform.astype(np.float32, copy=False)
