"""CTC decoding constrained to a closed lexicon: the best-scoring sequence of lexicon words.

Greedy CTC decoding picks the likeliest symbol frame by frame and can spell words that do not
exist ("tree" for "three"). When the application's vocabulary is closed, the better answer is
the word sequence whose best CTC alignment (Viterbi path) has the highest log-probability:
every frame's full distribution counts, not only its top symbol.

The search runs over a word loop. Each lexicon word is a chain of CTC states
``c1 _ c2 _ ... cn _`` (``_`` the blank; the blank between two characters may be skipped
unless they are equal, as CTC requires for doubled letters). Between words the model must
emit the space symbol, possibly surrounded by blanks. Words are unweighted (no language
model); the search is one vectorised Viterbi step per output frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

NEG_INF = -1e30

# The states outside words: blanks before the first word, the space between words, and blanks
# after that space.
_START, _SPACE, _GAP = 0, 1, 2


class LexiconDecoder:
    """Viterbi decoding of CTC log-probabilities into lexicon words separated by spaces."""

    def __init__(self, vocabulary: Sequence[str], blank_index: int, lexicon: Sequence[str]) -> None:
        """Build the word-loop states.

        Raises:
            ValueError: the lexicon is empty, or a word uses a symbol outside the vocabulary
                (or the space, which separates words).
        """
        if not lexicon:
            raise ValueError("the lexicon is empty")
        symbol = {s: i for i, s in enumerate(vocabulary)}
        if " " not in symbol:
            raise ValueError("the vocabulary has no space symbol to separate words")
        self.words = tuple(lexicon)
        self.blank = blank_index
        self.space = symbol[" "]
        labels: list[int] = []
        word: list[int] = []
        first: list[bool] = []
        last: list[bool] = []
        skip: list[bool] = []
        for w, text in enumerate(self.words):
            unknown = sorted({c for c in text if c not in symbol or c == " "})
            if unknown or not text:
                raise ValueError(f"lexicon word {text!r} has symbols outside the vocabulary")
            chain = [s for c in text for s in (symbol[c], blank_index)]
            for k, label in enumerate(chain):
                labels.append(label)
                word.append(w)
                first.append(k == 0)
                last.append(k >= len(chain) - 2)  # the last character or the blank after it
                skip.append(k >= 2 and label != blank_index and chain[k - 2] != label)
        self.labels = np.array(labels, dtype=np.int64)
        self.word = np.array(word, dtype=np.int64)
        self.first = np.array(first)
        self.last = np.array(last)
        self.advance = ~self.first  # a word's state follows the one before it
        self.skip = np.array(skip)

    def decode(self, log_probs: npt.NDArray[np.floating[Any]]) -> str:
        """The best word sequence for one item's log-probabilities [T', V] ("" for silence)."""
        log_probs = np.asarray(log_probs, dtype=np.float64)
        if log_probs.ndim != 2 or log_probs.shape[0] == 0:
            return ""
        states = self.labels.size
        # Back-pointers: each decoded word is a node (parent node, word index); node 0 is the
        # empty history.
        parents: list[int] = [-1]
        node_words: list[int] = [-1]
        score = np.where(self.first, log_probs[0, self.labels], NEG_INF)
        history = np.zeros(states, dtype=np.int64)
        gap = np.array([log_probs[0, self.blank], NEG_INF, NEG_INF])
        gap_history = np.zeros(3, dtype=np.int64)
        columns = np.arange(states)
        for frame in log_probs[1:]:
            # Where each word state can come from: itself, the previous state, two back, or
            # (for a word's first character) the best gap state.
            entry = int(np.argmax(gap))
            candidates = np.full((4, states), NEG_INF)
            candidates[0] = score
            candidates[1, 1:] = np.where(self.advance[1:], score[:-1], NEG_INF)
            candidates[2, 2:] = np.where(self.skip[2:], score[:-2], NEG_INF)
            candidates[3] = np.where(self.first, gap[entry], NEG_INF)
            sources = np.stack(
                [
                    history,
                    np.roll(history, 1),
                    np.roll(history, 2),
                    np.full(states, gap_history[entry]),
                ]
            )
            choice = np.argmax(candidates, axis=0)
            new_score = candidates[choice, columns] + frame[self.labels]
            new_history = sources[choice, columns]

            ended = int(np.argmax(np.where(self.last, score, NEG_INF)))
            new_gap = np.full(3, NEG_INF)
            new_gap_history = np.zeros(3, dtype=np.int64)
            new_gap[_START] = gap[_START] + frame[self.blank]
            if self.last[ended] and score[ended] > gap[_SPACE]:
                parents.append(int(history[ended]))
                node_words.append(int(self.word[ended]))
                new_gap[_SPACE], new_gap_history[_SPACE] = score[ended], len(parents) - 1
            else:
                new_gap[_SPACE], new_gap_history[_SPACE] = gap[_SPACE], gap_history[_SPACE]
            new_gap[_SPACE] += frame[self.space]
            after = _SPACE if gap[_SPACE] >= gap[_GAP] else _GAP
            new_gap[_GAP] = gap[after] + frame[self.blank]
            new_gap_history[_GAP] = gap_history[after]
            score, history, gap, gap_history = new_score, new_history, new_gap, new_gap_history

        # The transcript ends after a word's last character (or its blank), or it is empty.
        ended = int(np.argmax(np.where(self.last, score, NEG_INF)))
        if not (self.last[ended] and score[ended] > gap[_START]):
            return ""
        words = [int(self.word[ended])]
        node = int(history[ended])
        while node > 0:
            words.append(node_words[node])
            node = parents[node]
        return " ".join(self.words[w] for w in reversed(words))
