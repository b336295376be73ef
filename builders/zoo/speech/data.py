"""Speech the family is scored, calibrated and distilled on.

- **Real recordings** (Debian ``pocketsphinx-testdata``): five read LibriVox utterances of
  *Sense and Sensibility* and five playing-card phrases, 16 kHz, with their transcripts;
  about 90 words, 1 to 7 s each. ``long_recording`` joins all ten into one 44 s recording.
- **Synthetic sets**: open-vocabulary sentences (from the GNU GPL v3 and MPL 2.0 texts,
  ``data/sentences-eval.txt``, 1,106 words) spoken by ``espeak-ng`` and, separately, by
  ``flite``, a different engine, each rotating through several of its voices. Sentences are
  joined into utterances of up to :data:`PACKED_S` seconds, so each set spans one to
  several sentences per 30 s window. Distillation speaks ``sentences-train.txt`` (other
  licence texts) with espeak-ng voices only, so no evaluation sentence is ever trained on.

Synthesis is deterministic (fixed voices, texts and order) and cached per process.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from gateway.tasks.audio import SAMPLE_RATE_HZ, decode_audio

FloatArray = npt.NDArray[np.float32]
DATA_DIR = Path(__file__).with_name("data")
RECORDINGS_DIR = Path("/usr/share/pocketsphinx/test/data")
"""Where Debian's ``pocketsphinx-testdata`` installs its recordings."""
ESPEAK_VOICES = ("en-us", "en-gb", "en-us+f3", "en-gb-x-rp", "en-us+m4", "en-029")
FLITE_VOICES = ("kal", "slt", "awb", "rms")
PACKED_S = 25.0
"""Longest synthetic utterance: sentences are joined (0.4 s apart) up to this length."""
GAP_S = 0.4
LONG_GAP_S = 1.07
"""Silence between the recordings joined into the long one."""


@dataclass(frozen=True)
class Utterance:
    """One scored utterance: 16 kHz mono samples and what was said."""

    name: str
    waveform: FloatArray
    text: str

    @property
    def seconds(self) -> float:
        """Length in seconds."""
        return self.waveform.size / SAMPLE_RATE_HZ


def _transcripts(path: Path) -> dict[str, str]:
    """``<s> words </s> (id)`` lines → {id: words}."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "(" not in line:
            continue
        words, _, rest = line.rpartition("(")
        text = words.replace("<s>", " ").replace("</s>", " ")
        out[rest.rstrip(") \n")] = " ".join(text.split())
    return out


@functools.lru_cache(maxsize=1)
def real_recordings() -> tuple[Utterance, ...]:
    """The ten real recordings with their transcripts, in a fixed order.

    Raises:
        FileNotFoundError: ``pocketsphinx-testdata`` is not installed.
    """
    if not RECORDINGS_DIR.is_dir():
        raise FileNotFoundError(
            f"{RECORDINGS_DIR} is missing: install the Debian package pocketsphinx-testdata"
        )
    utterances = []
    for folder, listing in (("librivox", "transcription"), ("cards", "cards.transcription")):
        for key, text in sorted(_transcripts(RECORDINGS_DIR / folder / listing).items()):
            audio = decode_audio((RECORDINGS_DIR / folder / f"{key}.wav").read_bytes())
            utterances.append(Utterance(f"{folder}/{key}", audio, text))
    return tuple(utterances)


def long_recording() -> Utterance:
    """All ten real recordings joined by short silences: 44 s, one reference text."""
    gap = np.zeros(round(LONG_GAP_S * SAMPLE_RATE_HZ), np.float32)
    parts: list[FloatArray] = []
    for u in real_recordings():
        parts += [u.waveform, gap]
    text = " ".join(u.text for u in real_recordings())
    return Utterance("real/joined", np.concatenate(parts[:-1]), text)


def sentences(split: str) -> list[str]:
    """The sentences of ``eval`` or ``train``."""
    lines = (DATA_DIR / f"sentences-{split}.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def speak(engine: str, text: str, voice: str) -> FloatArray:
    """Synthesise ``text`` with ``espeak-ng`` or ``flite`` as a 16 kHz waveform."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "speech.wav"
        if engine == "espeak-ng":
            command = ["espeak-ng", "-v", voice, "-w", str(out), text]
        elif engine == "flite":
            command = ["flite", "-voice", voice, "-t", text, "-o", str(out)]
        else:
            raise ValueError(f"unknown synthesiser {engine!r}")
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        return decode_audio(out.read_bytes())


def pack(name: str, pieces: list[tuple[FloatArray, str]], max_s: float) -> list[Utterance]:
    """Join consecutive (waveform, text) pieces into utterances of at most ``max_s``."""
    gap = np.zeros(round(GAP_S * SAMPLE_RATE_HZ), np.float32)
    out: list[Utterance] = []
    waves: list[FloatArray] = []
    texts: list[str] = []

    def flush() -> None:
        if waves:
            joined = np.concatenate([p for w in waves for p in (w, gap)][:-1])
            out.append(Utterance(f"{name}/{len(out):03d}", joined, " ".join(texts)))
            waves.clear()
            texts.clear()

    for wave, text in pieces:
        length = sum(w.size for w in waves) + len(waves) * gap.size + wave.size
        if waves and length > max_s * SAMPLE_RATE_HZ:
            flush()
        waves.append(wave)
        texts.append(text)
    flush()
    return out


@functools.lru_cache(maxsize=4)
def synthetic_set(engine: str, split: str = "eval") -> tuple[Utterance, ...]:
    """``split``'s sentences spoken by ``engine``, voices in rotation, packed."""
    voices = ESPEAK_VOICES if engine == "espeak-ng" else FLITE_VOICES
    pieces = [
        (speak(engine, text, voices[i % len(voices)]), text)
        for i, text in enumerate(sentences(split))
    ]
    return tuple(pack(f"{engine}/{split}", pieces, PACKED_S))
