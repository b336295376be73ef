"""Whisper's log-mel front end in numpy: the features the Whisper encoder was trained on.

25 ms periodic Hann windows (n_fft 400) every 10 ms, centred with reflect padding, power
spectrum, 80 Slaney-scale mel filters with Slaney area normalisation (librosa's default),
``log10`` clamped at 1e-10, floored at 8 decades below the loudest value of the whole
utterance and mapped by ``(x + 4) / 4``. As in the reference implementations, the waveform is
padded with one hop of zeros first and the last STFT frame is dropped, so N samples give
``N // 160 + 1`` frames.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]

N_FFT = 400
HOP_LENGTH = 160
WINDOW_FRAMES = 3000
"""Frames of one encoder window: 30 s at 10 ms."""
LOG_FLOOR_DECADES = 8.0


def _hz_to_mel(f_hz: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Slaney mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mels = f_hz / f_sp
    above = f_hz >= min_log_hz
    mels[above] = min_log_mel + np.log(f_hz[above] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    freqs = f_sp * mels
    above = mels >= min_log_mel
    freqs[above] = min_log_hz * np.exp(logstep * (mels[above] - min_log_mel))
    return freqs


@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80, sample_rate_hz: int = 16000) -> FloatArray:
    """[n_mels, N_FFT // 2 + 1] Slaney mel filterbank, area-normalised (cached, read-only)."""
    bins_hz = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate_hz)
    edges_mel = np.linspace(0.0, _hz_to_mel(np.array([sample_rate_hz / 2.0]))[0], n_mels + 2)
    edges_hz = _mel_to_hz(edges_mel)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - bins_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2 : n_mels + 2] - edges_hz[:n_mels]))[:, None]
    out = np.ascontiguousarray(weights, dtype=np.float32)
    out.flags.writeable = False
    return out


@functools.lru_cache(maxsize=2)
def _window() -> FloatArray:
    n = np.arange(N_FFT, dtype=np.float64)
    return np.asarray(0.5 - 0.5 * np.cos(2.0 * math.pi * n / N_FFT), dtype=np.float32)


def num_frames(num_samples: int) -> int:
    """Feature frames of a waveform of ``num_samples`` samples."""
    return num_samples // HOP_LENGTH + 1


def log_mel(waveform: FloatArray, n_mels: int = 80) -> FloatArray:
    """Whisper log-mel features of a 16 kHz mono waveform: float32 [n_mels, frames]."""
    x = np.pad(np.asarray(waveform, dtype=np.float32), (0, HOP_LENGTH))
    x = np.pad(x, (N_FFT // 2, N_FFT // 2), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH]
    spectrum = np.fft.rfft(frames * _window(), n=N_FFT, axis=-1)[:-1]
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    mel = mel_filters(n_mels) @ power.T
    logs = np.log10(np.maximum(mel, 1e-10))
    logs = np.maximum(logs, logs.max() - LOG_FLOOR_DECADES)
    return np.asarray((logs + 4.0) / 4.0, dtype=np.float32)


def window(features: FloatArray, start: int, stop: int) -> FloatArray:
    """Frames ``[start, stop)`` of ``features``, zero-padded to one encoder window."""
    part = features[:, start:stop]
    out = np.zeros((features.shape[0], WINDOW_FRAMES), dtype=np.float32)
    out[:, : part.shape[1]] = part[:, :WINDOW_FRAMES]
    return out
