"""English→German text: sentencepiece in and out, batched greedy decoding over one graph.

The graph takes ``src_ids`` [B,S] and ``tgt_ids`` [B,T] (INT64, pad-masked) and returns the
next-token ``logits`` [B,V] after each row's last non-pad target token. Decoding calls it once
per output token with the batch's unfinished rows; finished rows are padded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import sentencepiece as spm

from gateway.tasks.base import RunGraph, TaskInputError, pad_stack

SPM_FILE = "spm.model"
SETTINGS_FILE = "tokenizer.json"


class TranslationTask:
    """Translate a batch of English texts to German through a graph runner."""

    def __init__(self, assets_dir: Path) -> None:
        """Load ``spm.model`` and ``tokenizer.json`` (special ids, token limits) from a dir."""
        self.processor = spm.SentencePieceProcessor(model_file=str(assets_dir / SPM_FILE))
        settings: dict[str, Any] = json.loads((assets_dir / SETTINGS_FILE).read_text())
        self.pad_id: int = settings["pad_id"]
        self.bos_id: int = settings["bos_id"]
        self.eos_id: int = settings["eos_id"]
        self.max_source_tokens: int = settings["max_source_tokens"]
        self.max_target_tokens: int = settings["max_target_tokens"]
        self.output_ratio: float = settings["output_ratio"]
        self.output_margin: int = settings["output_margin"]

    def encode(self, texts: list[Any]) -> list[list[int]]:
        """Validate and tokenize texts (without the end-of-sentence id).

        Raises:
            TaskInputError: an item is not a string, is blank, or has more tokens than the
                model can read.
        """
        encoded = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TaskInputError(f"text {i} must be a string, got {type(text).__name__}")
            normalised = " ".join(text.split())  # the corpus was whitespace-normalised too
            if not normalised:
                raise TaskInputError(f"text {i} is empty or only whitespace")
            ids: list[int] = self.processor.encode(normalised)
            if len(ids) > self.max_source_tokens:
                raise TaskInputError(
                    f"text {i} has {len(ids)} tokens; at most {self.max_source_tokens} are allowed"
                )
            encoded.append(ids)
        return encoded

    def output_cap(self, source_tokens: int) -> int:
        """Most tokens to generate for a source of ``source_tokens`` tokens."""
        wanted = math.ceil(source_tokens * self.output_ratio) + self.output_margin
        return min(self.max_target_tokens, wanted)

    def run(self, items: list[Any], run_graph: RunGraph) -> list[str]:
        """Translate ``items`` (English strings) into German strings, in order."""
        if not items:
            return []
        encoded = self.encode(items)
        src = pad_stack([np.array([*ids, self.eos_id], np.int64) for ids in encoded], self.pad_id)
        caps = np.array([self.output_cap(len(ids)) for ids in encoded])
        tgt = np.full((len(encoded), 1), self.bos_id, np.int64)
        done = np.zeros(len(encoded), dtype=bool)
        for step in range(int(caps.max())):
            # Only unfinished rows go to the graph; each row's logits depend on its own ids.
            rows = np.flatnonzero(~done)
            feeds = {"src_ids": src[rows], "tgt_ids": tgt[rows]}
            logits = np.asarray(run_graph(feeds)["logits"])
            if logits.ndim != 2 or logits.shape[0] != rows.size:
                raise ValueError(f"graph returned logits of shape {logits.shape}")
            token = np.full(len(encoded), self.pad_id, np.int64)
            token[rows] = self._next_tokens(logits)
            tgt = np.concatenate([tgt, token[:, None]], axis=1)
            done[rows] = (token[rows] == self.eos_id) | (step + 1 >= caps[rows])
            if done.all():
                break
        return [self._detokenize(row) for row in tgt[:, 1:]]

    def _next_tokens(self, logits: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
        # pad and <s> never follow: a pad would end the row's prefix for the graph
        masked = logits.astype(np.float32, copy=True)
        masked[:, [self.pad_id, self.bos_id]] = -np.inf
        tokens: npt.NDArray[np.int64] = masked.argmax(axis=1).astype(np.int64)
        return tokens

    def _detokenize(self, row: npt.NDArray[np.int64]) -> str:
        ids = row.tolist()
        for stop in (self.eos_id, self.pad_id):
            if stop in ids:
                ids = ids[: ids.index(stop)]
        text: str = self.processor.decode(ids)
        return text
