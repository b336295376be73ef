"""Lexicon-constrained CTC decoding against a brute-force search over word sequences."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gateway.tasks.ctc_lexicon import LexiconDecoder

VOCABULARY = ["_", " ", "a", "b", "c"]
LEXICON = ("ab", "ba", "abb", "c")


def best_path_score(log_probs: np.ndarray, text: str) -> float:
    """Log-probability of the best CTC alignment of ``text`` (textbook Viterbi)."""
    symbol = {s: i for i, s in enumerate(VOCABULARY)}
    labels = [0]
    for c in text:
        labels += [symbol[c], 0]
    score = np.full(len(labels), -np.inf)
    score[0] = log_probs[0, 0]
    if len(labels) > 1:
        score[1] = log_probs[0, labels[1]]
    for frame in log_probs[1:]:
        previous = score.copy()
        for s, label in enumerate(labels):
            best = previous[s]
            if s >= 1:
                best = max(best, previous[s - 1])
            if s >= 2 and label != 0 and labels[s - 2] != label:
                best = max(best, previous[s - 2])
            score[s] = best + frame[label]
    return float(max(score[-1], score[-2])) if len(labels) > 1 else float(score[-1])


def random_log_probs(seed: int, frames: int) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(0.0, 3.0, (frames, len(VOCABULARY)))
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("seed", range(25))
def test_decoder_finds_the_best_scoring_word_sequence(seed: int) -> None:
    log_probs = random_log_probs(seed, frames=8)
    candidates = [""] + [
        " ".join(words) for n in range(1, 5) for words in itertools.product(LEXICON, repeat=n)
    ]
    best = max(candidates, key=lambda text: best_path_score(log_probs, text))
    decoder = LexiconDecoder(VOCABULARY, 0, LEXICON)
    assert decoder.decode(log_probs) == best


def spelled(path: str) -> np.ndarray:
    """Log-probabilities that put almost all mass on one symbol per frame."""
    log_probs = np.full((len(path), len(VOCABULARY)), -9.0)
    for t, c in enumerate(path):
        log_probs[t, VOCABULARY.index(c)] = 0.0
    return log_probs


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("ab_ c", "ab c"),
        ("abb", "ab"),  # a repeated symbol without a blank is one character
        ("ab_b", "abb"),
        ("__ba__ __ab_", "ba ab"),
        ("____", ""),
        ("ac", "ab"),  # "c" alone is a word, but only a space can separate two words
    ],
)
def test_decoder_follows_ctc_rules(path: str, text: str) -> None:
    assert LexiconDecoder(VOCABULARY, 0, LEXICON).decode(spelled(path)) == text


def test_decoder_handles_no_frames() -> None:
    decoder = LexiconDecoder(VOCABULARY, 0, LEXICON)
    assert decoder.decode(np.zeros((0, len(VOCABULARY)))) == ""


@pytest.mark.parametrize(
    ("lexicon", "message"),
    [((), "empty"), (("ab", "d"), "'d'"), (("a b",), "'a b'")],
)
def test_bad_lexicon_is_refused(lexicon: tuple[str, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LexiconDecoder(VOCABULARY, 0, lexicon)
