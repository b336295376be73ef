"""Training data and loss steps shared by the recipe and the pruning recovery fine-tune."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice, repeat

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from builders.zoo.speech import corpus
from builders.zoo.speech.model import SpeechCTC
from gateway.tasks.base import pad_stack
from gateway.tasks.speech import FeatureSettings, SpeechTask, log_mel, mel_filterbank

GAIN_DB = (-14.0, 6.0)
"""Random level change applied to training audio, so the model does not key on loudness."""
FREQ_WARP = (0.85, 1.15)
TIME_WARP = (0.88, 1.12)
TRAIN_DIGIT_FRACTION = 0.25
TRAIN_MAX_WORDS = 4
"""Training utterances lean towards words: every digit string exercises the same ten words,
while each of the ~220 list words is heard far less often, and learning their spellings is
what limits accuracy."""
MAX_EXTRA_PADDING = 100
"""Most feature frames of trailing padding added to a training batch. Batches group similar
lengths, so without it the model would rarely see the long padded tail that a short item
gets in a mixed-length serving batch."""
RECOVER_NEW_PER_STEP = 8
RECOVER_BATCH_SIZE = 32
RECOVER_SYNTH_WORKERS = 2
"""espeak-ng processes speaking recovery utterances while torch trains on one thread."""


@dataclass(frozen=True)
class Example:
    """One training utterance: features [T, n_mels] and target symbol ids."""

    features: npt.NDArray[np.float32]
    targets: npt.NDArray[np.int64]


def encode(transcript: str, task: SpeechTask) -> npt.NDArray[np.int64]:
    """Symbol ids of a transcript in the task's vocabulary."""
    index = {c: i for i, c in enumerate(task.vocabulary)}
    return np.array([index[c] for c in transcript], dtype=np.int64)


def sample_training_utterances(count: int, rng: np.random.Generator) -> list[corpus.Utterance]:
    """Random utterances from the training voices, with the training mix of words and digits."""
    return corpus.sample_utterances(
        count,
        corpus.voices(held_out=False),
        rng,
        digit_fraction=TRAIN_DIGIT_FRACTION,
        max_words=TRAIN_MAX_WORDS,
    )


def random_gain(rng: np.random.Generator) -> float:
    """A random level factor within ``GAIN_DB``."""
    gain: float = 10.0 ** (rng.uniform(*GAIN_DB) / 20.0)
    return gain


def synthesised_example(utt: corpus.Utterance, gain: float, task: SpeechTask) -> Example:
    """Speak ``utt``, scale it by ``gain`` and compute the serving features and targets."""
    waveform = (corpus.synthesize(utt) * gain).astype(np.float32)
    return Example(log_mel(waveform, task.settings), encode(utt.transcript, task))


@contextmanager
def spoken_examples(
    count: int, rng: np.random.Generator, task: SpeechTask, workers: int
) -> Iterator[Iterator[Example]]:
    """``count`` random training utterances, spoken by ``workers`` espeak-ng processes at once.

    What is said and how loud is drawn from ``rng`` up front; the examples come back in that
    order whatever the number of workers. On leaving, utterances not yet spoken are dropped
    instead of waited for.
    """
    utterances = sample_training_utterances(count, rng)
    gains = [random_gain(rng) for _ in utterances]
    speakers = ThreadPoolExecutor(max(1, workers))
    try:
        yield speakers.map(synthesised_example, utterances, gains, repeat(task))
    finally:
        speakers.shutdown(cancel_futures=True)


def make_examples(
    count: int,
    seed: int,
    task: SpeechTask,
    log: Callable[[str], None] = print,
    workers: int = 1,
) -> list[Example]:
    """Synthesise ``count`` utterances from training voices and compute their features.

    The features come from the serving code's own ``log_mel``, so training sees exactly what
    the gateway computes. ``workers`` espeak-ng processes run at once; the result does not
    depend on how many.
    """
    examples = []
    start_s = time.perf_counter()
    with spoken_examples(count, np.random.default_rng(seed), task, workers) as made_in_order:
        for i, made in enumerate(made_in_order):
            examples.append(made)
            if (i + 1) % 2000 == 0 or i + 1 == count:
                elapsed_s = time.perf_counter() - start_s
                log(f"  synthesised {i + 1}/{count} utterances ({elapsed_s:.0f} s)")
    return examples


def set_normalisation(model: SpeechCTC, examples: Sequence[Example]) -> None:
    """Set the model's per-mel-bin mean and inverse standard deviation from ``examples``.

    The statistics are those of the centred speech frames (see :meth:`SpeechCTC.centred`).
    """
    chunks = []
    with torch.no_grad():
        for e in examples:
            centred, speech = model.centred(torch.from_numpy(e.features)[None])
            chunks.append(centred[0][speech[0, :, 0] > 0].numpy())
    frames = np.concatenate(chunks)
    std = np.maximum(frames.std(axis=0), 1e-3)
    with torch.no_grad():
        model.feature_mean.copy_(torch.from_numpy(frames.mean(axis=0)))
        model.feature_scale.copy_(torch.from_numpy(1.0 / std))


@dataclass(frozen=True)
class Batch:
    """A zero-padded batch with the per-item lengths CTC needs."""

    features: torch.Tensor
    """[B, T, n_mels], zero-padded along T."""
    output_lengths: torch.Tensor
    """[B] output frames owned by each item."""
    targets: torch.Tensor
    """[sum of target lengths] concatenated symbol ids."""
    target_lengths: torch.Tensor


def make_batch(
    examples: Sequence[Example],
    model: SpeechCTC,
    rng: np.random.Generator,
    augment: bool,
    settings: FeatureSettings | None = None,
) -> Batch:
    """Pad a batch; with ``augment``, warp each item and add random extra padding."""
    feats = [e.features for e in examples]
    if augment:
        feats = [warp(f, rng, settings or FeatureSettings()) for f in feats]
    batch = pad_stack(feats, 0.0)
    if augment:
        # Extra trailing padding teaches the backward GRU to start from a padded tail; half
        # the batches get none, as a lone or longest item has none when served.
        extra = int(rng.integers(0, MAX_EXTRA_PADDING + 1)) if rng.random() < 0.5 else 0
        batch = np.pad(batch, ((0, 0), (0, extra), (0, 0)))
    lengths = [model.config.output_frames(f.shape[0]) for f in feats]
    return Batch(
        features=torch.from_numpy(batch),
        output_lengths=torch.tensor(lengths, dtype=torch.long),
        targets=torch.from_numpy(np.concatenate([e.targets for e in examples])),
        target_lengths=torch.tensor([e.targets.size for e in examples], dtype=torch.long),
    )


def warp(
    features: npt.NDArray[np.float32], rng: np.random.Generator, settings: FeatureSettings
) -> npt.NDArray[np.float32]:
    """Random frequency and time warp of log-mel features (a cheap stand-in for new voices).

    Frequencies scale by a factor in ``FREQ_WARP`` (vocal-tract length perturbation: filter
    ``m`` reads the spectrum at ``centre_m / factor``) and the time axis is resampled by a
    factor in ``TIME_WARP``; both by linear interpolation, so silence stays exactly 0.
    """
    centres_hz = _mel_centres_hz(settings)
    num_bins = centres_hz.size
    factor = rng.uniform(*FREQ_WARP)
    src = np.interp(centres_hz / factor, centres_hz, np.arange(num_bins))
    warped = _interp_rows(features.T, src).T
    num_frames = features.shape[0]
    stretched = max(1, round(num_frames * rng.uniform(*TIME_WARP)))
    return _interp_rows(warped, np.linspace(0, num_frames - 1, stretched))


def _interp_rows(
    x: npt.NDArray[np.float32], positions: npt.NDArray[np.float64]
) -> npt.NDArray[np.float32]:
    """Rows of ``x`` linearly interpolated at fractional row ``positions``."""
    lo = np.floor(positions).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[0] - 1)
    w = (positions - lo).astype(np.float32).reshape(-1, *([1] * (x.ndim - 1)))
    return np.asarray(x[lo] * (1.0 - w) + x[hi] * w, dtype=np.float32)


@lru_cache(maxsize=4)
def _mel_centres_hz(settings: FeatureSettings) -> npt.NDArray[np.float64]:
    """Centre frequency of each mel filter (where its weight peaks)."""
    bank = mel_filterbank(settings)
    bins_hz = np.linspace(0.0, settings.sample_rate_hz / 2, bank.shape[0])
    return np.asarray(bins_hz[np.argmax(bank, axis=0)], dtype=np.float64)


def ctc_loss(log_probs: torch.Tensor, batch: Batch, blank_index: int) -> torch.Tensor:
    """Mean CTC loss of a batch's log-probabilities [B, T', V].

    The mean is per target symbol, as ``reduction="mean"`` defines it.
    """
    return nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        batch.targets,
        batch.output_lengths,
        batch.target_lengths,
        blank=blank_index,
        zero_infinity=True,
    )


def distillation_loss(
    student: SpeechCTC, teacher: SpeechCTC, batch: Batch
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(teacher || student) over the valid frames, and the student's log-probs."""
    log_probs = student(batch.features)
    with torch.no_grad():
        target = teacher(batch.features)
    steps = torch.arange(log_probs.shape[1])[None, :]
    valid = (steps < batch.output_lengths[:, None]).to(log_probs.dtype)
    kl = (target.exp() * (target - log_probs)).sum(-1)
    return (kl * valid).sum() / valid.sum(), log_probs


def recover(
    student: SpeechCTC,
    teacher: SpeechCTC,
    task: SpeechTask,
    steps: int,
    seed: int = 7,
    lr: float = 1e-3,
    log: Callable[[str], None] = print,
) -> SpeechCTC:
    """Fine-tune a pruned ``student`` for ``steps`` optimizer steps (deterministic).

    Each step adds a few fresh training-voice utterances to a growing pool and trains on a
    batch drawn from it, with CTC on the transcripts plus distillation towards the
    ``teacher``'s per-frame distribution. The learning rate decays linearly over the steps.
    espeak-ng speaks the utterances ahead of the steps, in ``RECOVER_SYNTH_WORKERS``
    processes, while torch trains; what is spoken and which batches are drawn come from two
    seeded generators, so the result does not depend on that timing. Returns the student in
    eval mode.
    """
    if steps <= 0:
        return student.eval()
    speech_rng, batch_rng = (np.random.default_rng([seed, stream]) for stream in (0, 1))
    count = steps * RECOVER_NEW_PER_STEP
    pool: list[Example] = []
    teacher.eval()
    student.train()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-2)
    start_s = time.perf_counter()
    with spoken_examples(count, speech_rng, task, RECOVER_SYNTH_WORKERS) as spoken:
        for step in range(steps):
            pool.extend(islice(spoken, RECOVER_NEW_PER_STEP))
            size = min(RECOVER_BATCH_SIZE, len(pool))
            picks = batch_rng.choice(len(pool), size=size, replace=False)
            batch = make_batch([pool[i] for i in picks], student, batch_rng, augment=False)
            kl, log_probs = distillation_loss(student, teacher, batch)
            ctc = ctc_loss(log_probs, batch, task.blank_index)
            loss = ctc + kl
            for group in optimizer.param_groups:
                group["lr"] = lr * max(0.05, 1.0 - step / steps)
            optimizer.zero_grad()
            torch.autograd.backward(loss)
            nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            if (step + 1) % 50 == 0:
                losses = f"ctc {float(ctc.detach()):.3f}  kl {float(kl.detach()):.3f}"
                elapsed_s = time.perf_counter() - start_s
                log(f"  recover step {step + 1}/{steps}  {losses}  {elapsed_s:.0f} s")
    return student.eval()
