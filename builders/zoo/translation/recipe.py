"""The seeded training recipe, and the training loop that pruning recovery reuses."""

from __future__ import annotations

import itertools
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from safetensors.torch import save_file

from builders.zoo.translation import batches, evaluation, tokenizer
from builders.zoo.translation.corpus import read_split
from builders.zoo.translation.model import Translator, TranslatorConfig, parameter_count
from gateway.tasks.onnx_runner import onnx_graph_runner

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RecipeSettings:
    """Hyper-parameters of the training recipe."""

    seed: int = 1234
    epochs: int = 8
    max_tokens: int = 3072
    """Padded tokens per batch (rows x longest side)."""
    peak_lr: float = 1.5e-3
    warmup_steps: int = 300
    label_smoothing: float = 0.1
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    threads: int = 2
    """Torch threads: on an otherwise idle 2-core machine, 0.44 s a step with two."""
    log_every_steps: int = 50

    def __post_init__(self) -> None:
        """Reject settings that cannot train."""
        if self.epochs < 1 or self.max_tokens < 128 or self.threads < 1:
            raise ValueError("epochs >= 1, max_tokens >= 128 and threads >= 1 are required")
        if not 0 < self.peak_lr < 1:
            raise ValueError(f"peak_lr must be in (0, 1), got {self.peak_lr}")


def sequence_loss(
    model: Translator,
    batch: batches.Batch,
    label_smoothing: float,
    teacher: Translator | None = None,
    distill_weight: float = 0.5,
) -> torch.Tensor:
    """Token-level cross-entropy, mixed with the KL to a teacher's distribution if given."""
    pad = model.cfg.pad_id
    logits = model.all_logits(batch.src_ids, batch.tgt_in)
    ce = F.cross_entropy(
        logits.flatten(0, 1),
        batch.tgt_out.flatten(),
        ignore_index=pad,
        label_smoothing=label_smoothing,
    )
    if teacher is None:
        return ce
    with torch.no_grad():
        target = F.log_softmax(teacher.all_logits(batch.src_ids, batch.tgt_in), dim=-1)
    kl = F.kl_div(F.log_softmax(logits, dim=-1), target, log_target=True, reduction="none")
    real = (batch.tgt_out != pad).unsqueeze(-1)
    distill = (kl * real).sum() / real.sum()
    return (1 - distill_weight) * ce + distill_weight * distill


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def fit(
    model: Translator,
    batch_stream: Iterable[batches.Batch],
    optimizer: torch.optim.Optimizer,
    schedule: Callable[[int], float],
    should_stop: Callable[[int], bool],
    label_smoothing: float,
    clip_norm: float,
    teacher: Translator | None = None,
    distill_weight: float = 0.5,
    log: Callable[[int, float], None] | None = None,
) -> int:
    """Train until ``should_stop(step)``; returns the number of optimizer steps taken."""
    model.train()
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    step = 0
    for batch in batch_stream:
        if should_stop(step):
            break
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * schedule(step)
        loss = sequence_loss(model, batch, label_smoothing, teacher, distill_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
        step += 1
        if log is not None:
            log(step, loss.item())
    for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
        group["lr"] = base
    model.eval()
    return step


def make_optimizer(model: Translator, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW without weight decay on biases, norms and position embeddings."""
    decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "positions" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "positions" not in n)]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": other, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-9)


@torch.no_grad()
def mean_loss(model: Translator, batch_list: list[batches.Batch]) -> float:
    """Average unsmoothed cross-entropy per target token."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batch_list:
        logits = model.all_logits(batch.src_ids, batch.tgt_in)
        target = batch.tgt_out.flatten()
        total += float(
            F.cross_entropy(logits.flatten(0, 1), target, ignore_index=0, reduction="sum")
        )
        tokens += int((target != model.cfg.pad_id).sum())
    return total / max(1, tokens)


def train_model(
    cfg: TranslatorConfig, settings: RecipeSettings, echo: Callable[[str], None] = print
) -> tuple[Translator, dict[str, Any]]:
    """Train a fresh model on the train split; returns it with step and time counts."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    processor, spm_settings = tokenizer.load_spm(), tokenizer.load_settings()
    train_items = batches.encode_pairs(processor, read_split("train"), spm_settings)
    dev_items = batches.encode_pairs(processor, read_split("calibration"), spm_settings)
    rng = np.random.default_rng(settings.seed)
    dev = batches.epoch_batches(dev_items, settings.max_tokens, cfg.pad_id, rng)
    epochs = [
        batches.epoch_batches(train_items, settings.max_tokens, cfg.pad_id, rng)
        for _ in range(settings.epochs)
    ]
    epoch_ends = list(itertools.accumulate(len(epoch) for epoch in epochs))
    total_steps = epoch_ends[-1]
    model = Translator(cfg)
    echo(f"{parameter_count(model)} parameters, {len(train_items)} pairs, {total_steps} steps")
    started = time.monotonic()

    def log(step: int, loss: float) -> None:
        elapsed = time.monotonic() - started
        if step % settings.log_every_steps == 0:
            echo(f"step {step}/{total_steps} loss {loss:.3f} {elapsed:.0f}s")
        if step in epoch_ends:
            epoch = epoch_ends.index(step) + 1
            echo(f"epoch {epoch}: dev loss {mean_loss(model, dev):.3f} after {elapsed:.0f}s")
            model.train()

    steps = fit(
        model,
        itertools.chain.from_iterable(epochs),
        make_optimizer(model, settings.peak_lr, settings.weight_decay),
        lambda step: lr_factor(step, settings.warmup_steps, total_steps),
        lambda step: False,
        settings.label_smoothing,
        settings.clip_norm,
        log=log,
    )
    info = {"train_steps": steps, "train_seconds": round(time.monotonic() - started, 1)}
    return model, info


def train(
    out_dir: Path = CHECKPOINT_DIR,
    settings: RecipeSettings | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the recipe; write weights, config and metrics (torch and ONNX) into ``out_dir``."""
    settings = settings or RecipeSettings()
    spm_settings = tokenizer.load_settings()
    cfg = TranslatorConfig(
        vocab_size=spm_settings["vocab_size"],
        max_positions=spm_settings["max_positions"],
        pad_id=spm_settings["pad_id"],
    )
    model, info = train_model(cfg, settings, echo)
    echo("evaluating on the held-out set (torch and ONNX Runtime)")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_dir / WEIGHTS_FILE))
    cfg.save(out_dir / CONFIG_FILE)
    metrics = {**measure(model), **info, "threads": settings.threads, "recipe": asdict(settings)}
    (out_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1) + "\n")
    echo(json.dumps(metrics, indent=1))
    return metrics


def measure(model: Translator) -> dict[str, Any]:
    """BLEU/chrF of torch and of its ONNX export, on all held-out pairs and the test subset."""
    heldout = read_split("heldout")
    limit = evaluation.TEST_SUBSET
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        evaluation.export_onnx(model, path)
        runners = {
            "torch": evaluation.torch_runner(model),
            "onnx": onnx_graph_runner(path),
        }
        full = {k: evaluation.evaluate(r, pairs=heldout) for k, r in runners.items()}
        subset = {k: evaluation.evaluate(r, limit, pairs=heldout) for k, r in runners.items()}
        onnx_bytes = path.stat().st_size
    return {
        **full["torch"],
        "heldout": {"pairs": len(heldout), **full},
        "test_subset": {"pairs": min(limit, len(heldout)), **subset},
        "params": parameter_count(model),
        "onnx_bytes": onnx_bytes,
    }
