"""Seeded training recipe for the speech family.

``python -m builders.zoo.speech.recipe`` synthesises training audio with espeak-ng, trains the
Conv1d + BiGRU CTC model on two CPU threads, scores it in torch and ONNX Runtime on the
committed held-out split, and writes ``checkpoint/{model.safetensors,config.json,
metrics.json}``. ``--splits`` first rewrites the committed ``data/eval.npz`` and
``data/calibration.npz``; ``--rescore`` only scores the committed checkpoint again.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from builders.zoo.speech import corpus, evaluation, training
from builders.zoo.speech.model import (
    SpeechConfig,
    SpeechCTC,
    count_parameters,
    export_onnx,
    load_checkpoint,
)
from gateway.tasks.speech import SpeechTask

PACKAGE_DIR = Path(__file__).resolve().parent
ASSETS_DIR = PACKAGE_DIR / "assets"
CHECKPOINT_DIR = PACKAGE_DIR / "checkpoint"

EVAL_UTTERANCES = 300
CALIBRATION_UTTERANCES = 64
TEST_SUBSET = 100
"""The unit tests score this many leading eval utterances; metrics.json records that subset."""


@dataclass(frozen=True)
class RecipeConfig:
    """Hyper-parameters of the training run."""

    seed: int = 0
    train_utterances: int = 18000
    steps: int = 4500
    batch_size: int = 32
    max_lr: float = 3e-3
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    length_window: int = 4
    """Each batch is drawn from this many batches' worth of utterances of similar length, so
    little time goes into padding."""
    threads: int = 2
    """Torch threads, and espeak-ng processes while synthesising. On an otherwise idle 2-core
    machine a step takes 0.12 s with two threads against 0.15 s with one."""

    def __post_init__(self) -> None:
        counts = (
            self.train_utterances,
            self.steps,
            self.batch_size,
            self.threads,
            self.length_window,
        )
        if min(counts) < 1:
            raise ValueError(f"counts must be positive: {self}")
        if self.max_lr <= 0:
            raise ValueError("max_lr must be positive")


def write_splits(log: Callable[[str], None] = print) -> None:
    """Regenerate the committed eval (held-out voices) and calibration (training voices) splits."""
    corpus.DATA_DIR.mkdir(parents=True, exist_ok=True)
    held_out = corpus.voices(held_out=True)
    rng = np.random.default_rng(1001)
    corpus.save_split(
        corpus.DATA_DIR / "eval.npz", corpus.sample_utterances(EVAL_UTTERANCES, held_out, rng)
    )
    rng = np.random.default_rng(1002)
    calibration = corpus.sample_utterances(
        CALIBRATION_UTTERANCES, corpus.voices(held_out=False), rng
    )
    corpus.save_split(corpus.DATA_DIR / "calibration.npz", calibration)
    log(f"wrote {EVAL_UTTERANCES} eval and {CALIBRATION_UTTERANCES} calibration utterances")


def fit(
    model: SpeechCTC,
    examples: list[training.Example],
    config: RecipeConfig,
    task: SpeechTask,
    log: Callable[[str], None] = print,
) -> None:
    """Train ``model`` in place with CTC, AdamW and a one-cycle learning rate.

    Batches group utterances of similar length (a random window of the length order).
    """
    rng = np.random.default_rng(config.seed + 1)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=config.steps, pct_start=0.15
    )
    by_length = np.argsort([e.features.shape[0] for e in examples], kind="stable")
    window = min(len(examples), config.batch_size * config.length_window)
    model.train()
    start_s, running = time.perf_counter(), 0.0
    for step in range(1, config.steps + 1):
        first = int(rng.integers(0, len(examples) - window + 1))
        picks = by_length[first + rng.choice(window, size=config.batch_size, replace=False)]
        batch = training.make_batch(
            [examples[i] for i in picks], model, rng, augment=True, settings=task.settings
        )
        loss = training.ctc_loss(model(batch.features), batch, task.blank_index)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        running += float(loss.detach())
        if step % 100 == 0:
            elapsed_s = time.perf_counter() - start_s
            log(f"  step {step}/{config.steps}  ctc {running / 100:.3f}  {elapsed_s:.0f} s")
            running = 0.0
    model.eval()


def score_model(model: SpeechCTC, task: SpeechTask) -> dict[str, float]:
    """Torch and ONNX Runtime WER/CER on the full eval split and on the test subset."""
    split = corpus.load_split("eval")
    torch_run = evaluation.torch_runner(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(model, onnx_path)
        onnx_run = evaluation.onnx_runner(onnx_path)
        torch_text = evaluation.transcribe(task, torch_run, split)
        onnx_text = evaluation.transcribe(task, onnx_run, split)
    refs = split.transcripts
    metrics: dict[str, float] = {"eval_utterances": float(len(split))}
    for prefix, hyps in (("", torch_text), ("onnx_", onnx_text)):
        for key, value in evaluation.error_rates(refs, hyps).items():
            metrics[prefix + key] = round(value, 4)
        subset = evaluation.error_rates(refs[:TEST_SUBSET], hyps[:TEST_SUBSET])
        for key, value in subset.items():
            metrics[f"subset_{prefix}{key}"] = round(value, 4)
    metrics["subset_utterances"] = float(TEST_SUBSET)
    metrics["onnx_torch_same_transcripts"] = float(
        sum(a == b for a, b in zip(torch_text, onnx_text, strict=True))
    )
    metrics["exact_transcripts"] = float(sum(a == b for a, b in zip(torch_text, refs, strict=True)))
    if task.lexicon:
        # What the acoustic model spells on its own, before the lexicon repairs words.
        open_task = copy.copy(task)
        open_task.lexicon = ()
        raw = evaluation.error_rates(refs, evaluation.transcribe(open_task, torch_run, split))
        for key, value in raw.items():
            metrics[f"open_vocabulary_{key}"] = round(value, 4)
    return metrics


def train(
    out_dir: Path, config: RecipeConfig | None = None, log: Callable[[str], None] = print
) -> dict[str, float]:
    """Run the whole recipe and write the checkpoint, config and metrics into ``out_dir``."""
    config = config or RecipeConfig()
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    task = SpeechTask(ASSETS_DIR)
    start_s = time.perf_counter()
    log(f"synthesising {config.train_utterances} training utterances")
    examples = training.make_examples(
        config.train_utterances, config.seed, task, log, workers=config.threads
    )
    model = SpeechCTC(SpeechConfig(vocab_size=len(task.vocabulary)))
    training.set_normalisation(model, examples)
    log(f"training {count_parameters(model)} parameters for {config.steps} steps")
    fit(model, examples, config, task, log)
    train_s = time.perf_counter() - start_s
    log(f"trained in {train_s:.0f} s; scoring on the held-out voices")
    metrics = score_model(model, task)
    metrics.update(params=float(count_parameters(model)), train_seconds=round(train_s, 1))
    metrics["train_threads"] = float(config.threads)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors"
    )
    model.config.save(out_dir / "config.json")
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (out_dir / "recipe.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    log(json.dumps(metrics, indent=2))
    return metrics


def rescore(checkpoint_dir: Path = CHECKPOINT_DIR, log: Callable[[str], None] = print) -> None:
    """Score a trained checkpoint again (after a change to decoding or to the eval split).

    The accuracy figures in ``metrics.json`` are replaced; the training figures (parameter
    count, training time) are kept, since no training happens.
    """
    model = load_checkpoint(checkpoint_dir)
    path = checkpoint_dir / "metrics.json"
    metrics = json.loads(path.read_text())
    metrics.update(score_model(model, SpeechTask(ASSETS_DIR)))
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    log(json.dumps(metrics, indent=2))


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``python -m builders.zoo.speech.recipe [--out-dir DIR] [--splits]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=CHECKPOINT_DIR)
    parser.add_argument("--splits", action="store_true", help="rewrite data/eval and calibration")
    parser.add_argument("--steps", type=int, default=RecipeConfig.steps)
    parser.add_argument("--train-utterances", type=int, default=RecipeConfig.train_utterances)
    parser.add_argument(
        "--rescore", action="store_true", help="score the committed checkpoint, do not train"
    )
    args = parser.parse_args(argv)
    if args.rescore:
        rescore()
        return
    if args.splits:
        write_splits()
    train(args.out_dir, RecipeConfig(steps=args.steps, train_utterances=args.train_utterances))


if __name__ == "__main__":
    main()
