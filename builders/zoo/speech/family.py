"""The ``speech`` zoo family: audio → text with a Conv1d + BiGRU character CTC model."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt
import torch
from torch import nn

from builders.zoo.api import MetricSpec, ShapeRange
from builders.zoo.base import FamilyBase, as_module, torch_threads
from builders.zoo.speech import corpus, evaluation, pruning, recipe, training
from builders.zoo.speech.model import SpeechCTC, export_onnx, load_checkpoint
from gateway.tasks.base import RunGraph
from gateway.tasks.speech import SpeechTask, log_mel

PRUNE_CALIBRATION_UTTERANCES = 32
"""Calibration utterances whose activations rank units for pruning."""
RECOVER_STEPS_PER_S = 3.5
"""Recovery steps per second of a 2-core CPU (see ``ZooFamily.recover``)."""
CONV_PRUNE_FACTOR = 2.0
"""The front-end conv loses this many times the pruning ratio of its channels (at most
``MAX_CONV_PRUNE``). Its 192 channels only feed the first GRU's input gates: at pruned-25,
halving them rather than removing a quarter made the graph 1.59× instead of 1.48× faster
than fp32 (1 s of audio, ONNX Runtime, one thread) for 0.15 more points of WER after a
120 s recovery (1.02 lost instead of 0.87)."""
MAX_CONV_PRUNE = 0.75


class SpeechFamily(FamilyBase):
    """Zoo family over the committed speech checkpoint, eval and calibration splits."""

    name = "speech"
    task = "audio-text"
    metric = MetricSpec("wer", higher_is_better=False)
    assets_dir = recipe.ASSETS_DIR
    recover_budget_s = 120.0
    """pruned-25 loses 2.03 points of WER after 60 s of recovery and 1.02 after 120 s."""
    task_type = SpeechTask
    default_checkpoint_dir = recipe.CHECKPOINT_DIR

    def speech_task(self) -> SpeechTask:
        """The task-level pre/post-processing, built from this family's assets."""
        return SpeechTask(self.assets_dir)

    def sample_items(self, count: int) -> list[Any]:
        """Held-out waveforms (float32, 16 kHz), the form clients send, for profiling."""
        split = corpus.load_split("eval")
        return [split.waveform(i) for i in range(min(count, len(split)))]

    def load(self) -> nn.Module:
        """Load the checkpoint into a :class:`SpeechCTC` in eval mode."""
        return load_checkpoint(self.checkpoint_dir)

    def train(self, out_dir: Path) -> dict[str, float]:
        """Run the seeded recipe (espeak-ng synthesis + CTC training) into ``out_dir``."""
        return recipe.train(out_dir)

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Export to one graph: ``features`` [B, T, 80] → ``log_probs`` [B, T', V]."""
        export_onnx(module, path)

    def evaluate(self, run_graph: RunGraph, limit: int | None = None) -> dict[str, float]:
        """WER and CER (percent) on the first ``limit`` held-out-voice utterances."""
        return evaluation.score(self.speech_task(), run_graph, corpus.load_split("eval"), limit)

    def torch_runner(self, module: nn.Module) -> RunGraph:
        """A graph runner over ``module`` with the ONNX graph's tensor names."""
        return evaluation.torch_runner(module)

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """Up to ``count`` single-utterance ``features`` batches from the calibration split."""
        split = corpus.load_split("calibration")
        settings = self.speech_task().settings
        for i in range(min(count, len(split))):
            yield {"features": log_mel(split.waveform(i), settings)[None]}

    def shape_ranges(self, max_batch_size: int) -> dict[str, ShapeRange]:
        """``features`` [B, T, 80] up to the longest audio the task accepts."""
        task = self.speech_task()
        settings = task.settings
        frames = settings.num_frames(int(task.max_duration_s * settings.sample_rate_hz))
        typical = next(iter(self.calibration_inputs(1)))["features"].shape[1]
        return {
            "features": ShapeRange(
                (1, 1, settings.n_mels),
                (1, typical, settings.n_mels),
                (max_batch_size, frames, settings.n_mels),
            )
        }

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Remove ``ratio`` of the GRU units and more of the conv channels (least important).

        The conv loses ``CONV_PRUNE_FACTOR`` times ``ratio``, at most ``MAX_CONV_PRUNE``.
        """
        feats = [
            torch.from_numpy(batch["features"])
            for batch in self.calibration_inputs(PRUNE_CALIBRATION_UTTERANCES)
        ]
        conv_ratio = min(CONV_PRUNE_FACTOR * ratio, MAX_CONV_PRUNE)
        return pruning.prune(as_module(module, SpeechCTC), ratio, feats, conv_ratio)

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Fine-tune a pruned module with CTC and distillation from ``teacher``.

        ``budget_s`` becomes a step count at ``RECOVER_STEPS_PER_S``: reproducible results.
        """
        # The batches are small: one thread avoids OpenMP spinning on a busy machine.
        with torch_threads(1):
            return training.recover(
                as_module(module, SpeechCTC),
                as_module(teacher, SpeechCTC),
                self.speech_task(),
                steps=round(budget_s * RECOVER_STEPS_PER_S),
            )


FAMILY = SpeechFamily()
