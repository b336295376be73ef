"""The ``translation`` family as the zoo CLI and the variant builder see it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from safetensors.torch import load_file
from torch import nn

from builders.zoo.api import MetricSpec, ShapeRange, ZooFamily
from builders.zoo.base import FamilyBase, as_module
from builders.zoo.translation import evaluation, prune, recipe, tokenizer
from builders.zoo.translation.corpus import read_split
from builders.zoo.translation.model import Translator, TranslatorConfig
from gateway.tasks.base import RunGraph, pad_stack
from gateway.tasks.translation import TranslationTask

CALIBRATION_BATCH = 8
CALIBRATION_SEED = 99
RECOVER_STEPS_PER_S = 2.0
"""Recovery steps per second of a 2-core CPU (see ``ZooFamily.recover``)."""


def load_checkpoint(checkpoint_dir: Path) -> Translator:
    """Load ``config.json`` and ``model.safetensors`` from a directory, in eval mode."""
    model = Translator(TranslatorConfig.load(checkpoint_dir / recipe.CONFIG_FILE))
    model.load_state_dict(load_file(str(checkpoint_dir / recipe.WEIGHTS_FILE)))
    return model.eval()


class TranslationFamily(FamilyBase):
    """English→German encoder–decoder trained on gettext catalogs, scored by BLEU."""

    name = "translation"
    task = "text-text"
    metric = MetricSpec("bleu", higher_is_better=True)
    assets_dir = tokenizer.ASSETS_DIR
    recover_budget_s = 120.0
    """pruned-50 (half the heads and FFN units) after 120 s loses 1.9 points of BLEU."""
    task_type = TranslationTask
    default_checkpoint_dir = recipe.CHECKPOINT_DIR

    def sample_items(self, count: int) -> list[Any]:
        """The first ``count`` English texts of the held-out set."""
        return [pair.en for pair in read_split("heldout")[:count]]

    def load(self) -> nn.Module:
        """Load the committed checkpoint in eval mode."""
        return load_checkpoint(self.checkpoint_dir)

    def train(self, out_dir: Path) -> dict[str, float]:
        """Run the seeded recipe into ``out_dir``; returns the headline metrics."""
        metrics = recipe.train(out_dir)
        return {
            "bleu": metrics["bleu"],
            "chrf": metrics["chrf"],
            "onnx_bleu": metrics["heldout"]["onnx"]["bleu"],
            "params": float(metrics["params"]),
            "train_seconds": metrics["train_seconds"],
        }

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Export a full or pruned translator to one ONNX graph (opset 17, weights inside)."""
        evaluation.export_onnx(as_module(module, Translator), path)

    def evaluate(self, run_graph: RunGraph, limit: int | None = None) -> dict[str, float]:
        """BLEU and chrF of greedy translations of the first ``limit`` held-out pairs."""
        return evaluation.evaluate(run_graph, limit, self.assets_dir)

    def torch_runner(self, module: nn.Module) -> RunGraph:
        """Run a translator with the ONNX graph's tensors (``src_ids``, ``tgt_ids``)."""
        return evaluation.torch_runner(as_module(module, Translator))

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """``count`` graph inputs of up to 8 calibration pairs each.

        Targets are cut at seeded random points, so the graph is calibrated on the prefixes
        of every length it sees while decoding.
        """
        processor = tokenizer.load_spm(self.assets_dir)
        settings = tokenizer.load_settings(self.assets_dir)
        pairs = read_split("calibration")
        rng = np.random.default_rng(CALIBRATION_SEED)
        pad, bos, eos = settings["pad_id"], settings["bos_id"], settings["eos_id"]
        for index in range(count):
            start = (index * CALIBRATION_BATCH) % len(pairs)
            chunk = (pairs * 2)[start : start + CALIBRATION_BATCH]
            src = [np.array([*processor.encode(p.en), eos], np.int64) for p in chunk]
            tgt = []
            for pair in chunk:
                ids = processor.encode(pair.de)
                tgt.append(np.array([bos, *ids[: rng.integers(0, len(ids) + 1)]], np.int64))
            yield {"src_ids": pad_stack(src, pad), "tgt_ids": pad_stack(tgt, pad)}

    def shape_ranges(self, max_batch_size: int) -> dict[str, ShapeRange]:
        """``src_ids`` and ``tgt_ids`` [B, L] up to the model's positions."""
        longest = tokenizer.load_settings(self.assets_dir)["max_positions"]
        first = next(iter(self.calibration_inputs(1)))
        return {
            name: ShapeRange((1, 1), (1, first[name].shape[1]), (max_batch_size, longest))
            for name in ("src_ids", "tgt_ids")
        }

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Remove ``ratio`` of the heads and FFN units of every block (lowest importance)."""
        return prune.prune(as_module(module, Translator), ratio)

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Fine-tune the pruned ``module`` on the train split.

        ``budget_s`` becomes a step count at ``RECOVER_STEPS_PER_S``: reproducible results.
        """
        steps = round(budget_s * RECOVER_STEPS_PER_S)
        return prune.recover(as_module(module, Translator), as_module(teacher, Translator), steps)


FAMILY: ZooFamily = TranslationFamily()
