"""Word and character error rates of a speech graph on a committed split."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from builders.zoo.speech.corpus import Split
from gateway.tasks.base import RunGraph
from gateway.tasks.speech import SpeechTask

EVAL_BATCH_SIZE = 16
"""Utterances per graph call; batches mix lengths, so padding is exercised as in serving."""


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance between two strings, or two sequences of tokens (words)."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def error_rates(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER in percent: total edits over total reference words / characters."""
    if len(references) != len(hypotheses) or not references:
        raise ValueError("need equally many references and hypotheses, at least one")
    word_edits = sum(
        edit_distance(r.split(), h.split()) for r, h in zip(references, hypotheses, strict=True)
    )
    char_edits = sum(
        edit_distance(list(r), list(h)) for r, h in zip(references, hypotheses, strict=True)
    )
    words = sum(len(r.split()) for r in references)
    chars = sum(len(r) for r in references)
    return {"wer": 100.0 * word_edits / words, "cer": 100.0 * char_edits / chars}


def transcribe(
    task: SpeechTask, run_graph: RunGraph, split: Split, limit: int | None = None
) -> list[str]:
    """Transcripts of the first ``limit`` utterances (all when None), in split order."""
    count = len(split) if limit is None else min(limit, len(split))
    out: list[str] = []
    for start in range(0, count, EVAL_BATCH_SIZE):
        stop = min(start + EVAL_BATCH_SIZE, count)
        waveforms = [split.waveform(i) for i in range(start, stop)]
        out.extend(task.run(list(waveforms), run_graph))
    return out


def score(
    task: SpeechTask, run_graph: RunGraph, split: Split, limit: int | None = None
) -> dict[str, float]:
    """WER and CER (percent) of a graph runner on the first ``limit`` utterances of a split."""
    hypotheses = transcribe(task, run_graph, split, limit)
    return error_rates(split.transcripts[: len(hypotheses)], hypotheses)


def torch_runner(module: torch.nn.Module) -> RunGraph:
    """Run a speech module as a graph: ``features`` in, ``log_probs`` out, no gradients."""

    def run(inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        with torch.inference_mode():
            out = module(torch.from_numpy(np.asarray(inputs["features"], dtype=np.float32)))
        return {"log_probs": out.numpy()}

    return run


def onnx_runner(path: Path, threads: int = 1) -> RunGraph:
    """Run an exported speech graph with ONNX Runtime on the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(inputs: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
        (log_probs,) = session.run(["log_probs"], {"features": inputs["features"]})
        return {"log_probs": np.asarray(log_probs)}

    return run
