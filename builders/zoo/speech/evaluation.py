"""WER and CER of a Whisper variant, after one documented English normaliser.

The normaliser (:func:`normalise`) makes a transcript and its reference comparable without
judging style: Unicode NFKC and lower case; hyphens and slashes become spaces; every other
character that is not a letter, a digit, an apostrophe inside a word or a space is dropped;
the titles ``mr``/``mrs``/``dr`` are spelled ``mister``/``missus``/``doctor``; number words
become digits (``ten`` → ``10``, ``fifty five`` → ``55``, and a run of single digits is read
digit by digit, ``five five`` → ``55``), so "five five" and "55" agree, as in Whisper's own
English normaliser; whitespace is collapsed. WER counts word edits (substitutions,
insertions, deletions) over reference words, CER character edits over reference characters
(spaces included), both summed over the set and in percent.

Each set is scored on its own: ``real`` (the recordings), ``espeak`` and ``flite``
(synthetic); the family's primary metric ``wer`` is the real recordings'.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from typing import Any

from builders.zoo.speech.data import Utterance

_UNITS = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen "
        "fourteen fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {
    w: 10 * i
    for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000}
_TITLES = {"mr": "mister", "mrs": "missus", "dr": "doctor"}


def _numbers(words: list[str]) -> list[str]:
    """Replace runs of number words by digits (see the module docstring)."""
    out: list[str] = []
    i = 0
    while i < len(words):
        if words[i] not in _UNITS and words[i] not in _TENS:
            out.append(words[i])
            i += 1
            continue
        # A run of single digit words ("five five") is a digit string.
        j = i
        while j < len(words) and words[j] in _UNITS and _UNITS[words[j]] < 10:
            j += 1
        if j - i >= 2 and (j == len(words) or words[j] not in _SCALES):
            out.append("".join(str(_UNITS[w]) for w in words[i:j]))
            i = j
            continue
        total, current = 0, 0
        while i < len(words):
            w = words[i]
            if w in _UNITS:
                current += _UNITS[w]
            elif w in _TENS and current % 100 == 0:
                current += _TENS[w]
            elif w in _SCALES and current:
                scale = _SCALES[w]
                if scale == 100:
                    current *= 100
                else:
                    total, current = total + current * scale, 0
            else:
                break
            i += 1
            if w in _UNITS and _UNITS[w] >= 10 and i < len(words) and words[i] in _UNITS:
                break  # "ten four" stays two numbers
        out.append(str(total + current))
    return out


def normalise(text: str) -> str:
    """The English normaliser of the module docstring."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = re.sub(r"[-/‐–—]", " ", text)
    text = re.sub(r"[^\w\s']|_", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    words = [_TITLES.get(w, w) for w in text.split()]
    return " ".join(_numbers(words))


def edit_distance(reference: Sequence[Any], hypothesis: Sequence[Any]) -> int:
    """Levenshtein distance (unit costs) between two sequences."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """WER and CER in percent, plus the counts behind them, over normalised texts."""
    word_errors = char_errors = words = chars = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = normalise(ref), normalise(hyp)
        word_errors += edit_distance(r.split(), h.split())
        char_errors += edit_distance(r, h)
        words += len(r.split())
        chars += len(r)
    return {
        "wer": 100.0 * word_errors / max(words, 1),
        "cer": 100.0 * char_errors / max(chars, 1),
        "word_errors": float(word_errors),
        "words": float(words),
    }


Transcribe = Callable[[list[Any]], list[str]]
"""Transcribes a list of waveforms (e.g. a task bound to a graph runner)."""


def score_set(
    transcribe: Transcribe, utterances: Sequence[Utterance], batch: int = 4
) -> tuple[dict[str, float], list[str]]:
    """Error rates of ``transcribe`` on ``utterances``, and its transcripts."""
    hypotheses: list[str] = []
    for start in range(0, len(utterances), batch):
        hypotheses += transcribe([u.waveform for u in utterances[start : start + batch]])
    return error_rates([u.text for u in utterances], hypotheses), hypotheses
