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
        self.exits = np.flatnonzero(last)
        """States where a word may end: its last character or the blank after it."""
        # Additive penalties (0 or -inf) on the ways into a word state, so that one frame is a
        # handful of whole-array operations.
        no = np.float32(-np.inf)
        self._from_previous = np.where(first, no, 0.0).astype(np.float32)
        self._from_two_back = np.where(skip, 0.0, no).astype(np.float32)
        self._from_gap = np.where(first, 0.0, no).astype(np.float32)

    def decode(self, log_probs: npt.NDArray[np.floating[Any]]) -> str:
        """The best word sequence for one item's log-probabilities [T', V] ("" for silence)."""
        log_probs = np.asarray(log_probs, dtype=np.float32)
        if log_probs.ndim != 2 or log_probs.shape[0] == 0:
            return ""
        frames = log_probs.shape[0]
        emissions = log_probs[:, self.labels]
        # Every frame's scores are kept: the trace back recomputes which way each state was
        # entered, which is cheaper than recording it (an argmax) at every frame.
        scores = np.empty_like(emissions)
        gaps = np.full((frames, 3), -np.inf, dtype=np.float32)
        space_after = np.full(frames, -1, dtype=np.int64)
        """The word state the space was entered from at each frame (-1: it stayed a space)."""

        scores[0] = emissions[0] + self._from_gap
        gaps[0, _START] = log_probs[0, self.blank]
        for t in range(1, frames):
            score, gap, new = scores[t - 1], gaps[t - 1], scores[t]
            new[:] = score
            np.maximum(new[1:], score[:-1] + self._from_previous[1:], out=new[1:])
            np.maximum(new[2:], score[:-2] + self._from_two_back[2:], out=new[2:])
            np.maximum(new, gap.max() + self._from_gap, out=new)
            new += emissions[t]

            blank, space = log_probs[t, self.blank], log_probs[t, self.space]
            ended = self.exits[int(np.argmax(score[self.exits]))]
            gaps[t, _START] = gap[_START] + blank
            if score[ended] > gap[_SPACE]:
                space_after[t] = ended
                gaps[t, _SPACE] = score[ended] + space
            else:
                gaps[t, _SPACE] = gap[_SPACE] + space
            gaps[t, _GAP] = max(gap[_SPACE], gap[_GAP]) + blank

        # The transcript ends after a word's last character (or its blank), or it is empty.
        ended = self.exits[int(np.argmax(scores[-1, self.exits]))]
        if not scores[-1, ended] > gaps[-1, _START]:
            return ""
        path = self._trace_back(int(ended), scores, gaps, space_after)
        return " ".join(self.words[w] for w in path)

    def _trace_back(
        self,
        final_state: int,
        scores: npt.NDArray[np.float32],
        gaps: npt.NDArray[np.float32],
        space_after: npt.NDArray[np.int64],
    ) -> list[int]:
        """Lexicon indices of the words on the best path that ends in ``final_state``."""
        words = [int(self.word[final_state])]
        state, gap_state = final_state, -1  # gap_state >= 0 while the path is between words
        for t in range(scores.shape[0] - 1, 0, -1):
            score, gap = scores[t - 1], gaps[t - 1]
            if gap_state < 0:
                # The forward pass's four candidates again; the best one is the way in.
                no = -np.inf
                ways = (
                    score[state],
                    score[state - 1] + self._from_previous[state] if state >= 1 else no,
                    score[state - 2] + self._from_two_back[state] if state >= 2 else no,
                    gap.max() + self._from_gap[state],
                )
                way = max(range(4), key=ways.__getitem__)  # ties: the first, as argmax
                if way == 3:
                    gap_state = int(np.argmax(gap))
                else:
                    state -= way
            elif gap_state == _SPACE and space_after[t] >= 0:
                state, gap_state = int(space_after[t]), -1
                words.append(int(self.word[state]))
            elif gap_state == _GAP:
                gap_state = _SPACE if gap[_SPACE] >= gap[_GAP] else _GAP
            # A space that stayed a space, or the blanks before the first word, stay put.
        words.reverse()
        return words
