"""Audio → text with Whisper: log-mel windows, one encoder call, greedy decoding with a KV cache.

A Whisper variant has two graphs (names and tensors are the manifest's ``graphs``):

- ``encoder``: ``mel`` FP32 [B, 80, 3000] (one 30 s window) → ``cross_keys`` and
  ``cross_values`` [B, layers, heads, 1500, head_dim]: every decoder layer's cross-attention
  keys and values, computed once per window.
- ``decoder``: ``tokens`` INT64 [B, T] (the new tokens), ``self_keys`` / ``self_values``
  [B, layers, heads, P, head_dim] (the self-attention cache of the P tokens before them,
  P = 0 at the first step), ``cross_keys`` / ``cross_values`` → ``logits`` FP32 [B, T, V]
  and ``self_keys_out`` / ``self_values_out`` [B, layers, heads, P + T, head_dim].

Audio longer than one window is cut into windows of at most 30 s, each ending at the quietest
100 ms of its last 5 s (so a cut rarely splits a word), and the windows' texts are joined.
Windows of every item of a request are encoded and decoded together, a few at a time; only
unfinished rows go to the decoder at each step. Decoding is greedy without timestamps, with
Whisper's token suppression and its no-speech test (a window whose ``<|nocaptions|>``
probability exceeds ``no_speech_threshold`` while its average token log-probability is below
``log_prob_threshold`` is silence and gives no text), as the reference implementations do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.tasks.audio import MAX_AUDIO_S, check_waveform, decode_audio
from gateway.tasks.base import RunGraphs
from gateway.tasks.bpe import ByteLevelDecoder
from gateway.tasks.log_mel import WINDOW_FRAMES, log_mel, window

FloatArray = npt.NDArray[np.float32]

SETTINGS_FILE = "whisper.json"
VOCABULARY_FILE = "vocabulary.txt"
ENCODER, DECODER = "encoder", "decoder"
"""Graph names of a Whisper variant."""
QUIET_SEARCH_FRAMES = 500
"""A long recording's window ends at the quietest point of its last 5 s (500 frames)."""
QUIET_SMOOTH_FRAMES = 10
"""Loudness is averaged over 100 ms when looking for that point."""


@dataclass(frozen=True)
class WhisperSettings:
    """Special tokens, suppression lists and limits, from a variant's ``whisper.json``."""

    n_mels: int
    n_text_ctx: int
    """Positions of the decoder (prompt + generated tokens)."""
    sot_sequence: tuple[int, ...]
    no_timestamps: int
    eot: int
    no_speech: int
    timestamp_begin: int
    suppress_ids: tuple[int, ...]
    """Never generated (non-speech symbols, special tokens)."""
    suppress_ids_begin: tuple[int, ...]
    """Not generated as the first token (a blank, end of text)."""
    max_new_tokens: int = 224
    window_batch: int = 4
    """Windows encoded and decoded together."""
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    max_duration_s: float = MAX_AUDIO_S

    @classmethod
    def load(cls, assets_dir: Path) -> WhisperSettings:
        """Read ``whisper.json``; unknown keys are an error."""
        raw: dict[str, Any] = json.loads((assets_dir / SETTINGS_FILE).read_text())
        for key in ("sot_sequence", "suppress_ids", "suppress_ids_begin"):
            raw[key] = tuple(raw[key])
        return cls(**raw)

    @property
    def prompt(self) -> tuple[int, ...]:
        """What every window's decoding starts from."""
        return (*self.sot_sequence, self.no_timestamps)


@dataclass
class WindowResult:
    """One decoded window."""

    tokens: list[int]
    no_speech_prob: float
    avg_logprob: float


def window_bounds(num_frames: int, loudness: FloatArray | None = None) -> list[tuple[int, int]]:
    """Frame ranges of the windows of an utterance of ``num_frames`` feature frames.

    Each window is at most 3000 frames; when more audio follows, it ends at the quietest
    frame (by ``loudness``, smoothed over 100 ms) of its last ``QUIET_SEARCH_FRAMES``.
    """
    content = max(num_frames - 1, 1)  # the last frame only holds the padding hop
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < content:
        stop = min(start + WINDOW_FRAMES, content)
        if stop < content and loudness is not None:
            low = stop - QUIET_SEARCH_FRAMES
            kernel = np.ones(QUIET_SMOOTH_FRAMES, np.float32) / QUIET_SMOOTH_FRAMES
            smooth = np.convolve(loudness[low:stop], kernel, mode="same")
            stop = low + int(np.argmin(smooth[QUIET_SMOOTH_FRAMES:])) + QUIET_SMOOTH_FRAMES
        bounds.append((start, stop))
        start = stop
    return bounds


class WhisperTask:
    """Waveforms or audio files in, transcripts out, through a Whisper variant's two graphs."""

    def __init__(self, assets_dir: Path) -> None:
        """Read ``whisper.json`` and ``vocabulary.txt`` from a variant's (or family's) assets."""
        self.settings = WhisperSettings.load(assets_dir)
        self.vocabulary = ByteLevelDecoder.from_file(assets_dir / VOCABULARY_FILE)
        s = self.settings
        mask = np.zeros(len(self.vocabulary), dtype=bool)
        mask[list(s.suppress_ids)] = True
        mask[s.timestamp_begin :] = True  # no timestamps are asked for
        self._suppress = mask
        begin = mask.copy()
        begin[list(s.suppress_ids_begin)] = True
        self._suppress_begin = begin

    def waveform(self, item: FloatArray | bytes) -> FloatArray:
        """A checked 16 kHz waveform of one item (decoded when it is an audio file).

        Raises:
            TaskInputError: The item is not usable audio; the message says why.
        """
        if isinstance(item, bytes):
            return decode_audio(item, self.settings.max_duration_s)
        return check_waveform(item, self.settings.max_duration_s)

    def windows(self, waveform: FloatArray) -> list[FloatArray]:
        """The encoder inputs of one waveform: [80, 3000] log-mel windows."""
        features = log_mel(waveform, self.settings.n_mels)
        bounds = window_bounds(features.shape[1], features.mean(axis=0))
        return [window(features, start, stop) for start, stop in bounds]

    def run(self, items: Sequence[FloatArray | bytes], run_graph: RunGraphs) -> list[str]:
        """Transcribe a batch of items; one transcript per item, in order.

        Raises:
            TaskInputError: An item is not usable audio.
        """
        owners: list[int] = []
        mels: list[FloatArray] = []
        for index, item in enumerate(items):
            for mel in self.windows(self.waveform(item)):
                owners.append(index)
                mels.append(mel)
        texts: list[list[str]] = [[] for _ in items]
        step = max(1, self.settings.window_batch)
        for start in range(0, len(mels), step):
            results = self.decode_windows(np.stack(mels[start : start + step]), run_graph)
            for owner, result in zip(owners[start : start + step], results, strict=True):
                text = self.text(result)
                if text:
                    texts[owner].append(text)
        return [" ".join(parts) for parts in texts]

    def text(self, result: WindowResult) -> str:
        """A window's text, or "" when it holds no speech."""
        s = self.settings
        if result.no_speech_prob > s.no_speech_threshold and result.avg_logprob < (
            s.log_prob_threshold
        ):
            return ""
        return self.vocabulary.decode(result.tokens).strip()

    def decode_windows(self, mel: FloatArray, run_graph: RunGraphs) -> list[WindowResult]:
        """Greedy decoding of a batch of windows ``mel`` [B, 80, 3000] with the KV cache."""
        s = self.settings
        encoded = run_graph({"mel": mel}, ENCODER)
        cross_k, cross_v = np.asarray(encoded["cross_keys"]), np.asarray(encoded["cross_values"])
        rows = mel.shape[0]
        empty = np.zeros((*cross_k.shape[:3], 0, cross_k.shape[4]), dtype=cross_k.dtype)
        self_k, self_v = empty, empty
        feeds_tokens = np.tile(np.asarray(s.prompt, np.int64), (rows, 1))
        generated: list[list[int]] = [[] for _ in range(rows)]
        logprob_sums = np.zeros(rows)
        no_speech = np.zeros(rows)
        active = np.arange(rows)
        limit = min(s.max_new_tokens, s.n_text_ctx - len(s.prompt))
        for step in range(limit):
            out = run_graph(
                {
                    "tokens": feeds_tokens,
                    "self_keys": self_k,
                    "self_values": self_v,
                    "cross_keys": cross_k,
                    "cross_values": cross_v,
                },
                DECODER,
            )
            logits = np.asarray(out["logits"], dtype=np.float32)
            if step == 0:
                no_speech[active] = _softmax(logits[:, len(s.sot_sequence) - 1])[:, s.no_speech]
            last = np.where(self._suppress_begin if step == 0 else self._suppress, -np.inf, 0.0)
            scores = logits[:, -1] + last
            tokens = scores.argmax(axis=-1)
            logprob_sums[active] += _log_softmax_at(scores, tokens)
            done = (tokens == s.eot) | (step + 1 >= limit)
            for row, token in zip(active, tokens, strict=True):
                if token != s.eot:
                    generated[row].append(int(token))
            keep = ~done
            if not keep.any():
                break
            self_k, self_v = np.asarray(out["self_keys_out"]), np.asarray(out["self_values_out"])
            if not keep.all():  # drop finished rows from every tensor the decoder sees
                self_k, self_v = self_k[keep], self_v[keep]
                cross_k, cross_v = cross_k[keep], cross_v[keep]
                active, tokens = active[keep], tokens[keep]
            feeds_tokens = tokens.astype(np.int64)[:, None]
        return [
            WindowResult(
                tokens=generated[r],
                no_speech_prob=float(no_speech[r]),
                avg_logprob=float(logprob_sums[r] / (len(generated[r]) + 1)),
            )
            for r in range(rows)
        ]


def _softmax(x: FloatArray) -> FloatArray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float32)


def _log_softmax_at(scores: FloatArray, tokens: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    top = scores.max(axis=-1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scores - top).sum(axis=-1))
    return np.asarray(scores[np.arange(len(tokens)), tokens] - log_z, dtype=np.float64)
