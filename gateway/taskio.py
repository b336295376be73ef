"""Task-level wire contract: KServe tensors ↔ task items, per task kind.

Clients send images, audio or text and get labels or text back; ``gateway.tasks`` turns
those items into graph tensors. This module is the thin layer between: it checks each input
tensor's datatype and shape (cheap, before routing), turns it into task items, runs the task
through a graph runner and packs the results as output tensors.

- ``image-labels``: input ``image`` BYTES [B] (encoded) or UINT8 [B,H,W,C] / [H,W,C];
  outputs ``labels`` BYTES [B,k] and ``scores`` FP32 [B,k]; parameter ``top_k``.
- ``audio-text``: input ``audio`` FP32 [B,N] / [N] (16 kHz samples) or BYTES [B] (audio
  files: WAV, FLAC, Ogg/Opus, at any rate); output ``text`` BYTES [B].
- ``text-text``: input ``text`` BYTES [B] (UTF-8); output ``text`` BYTES [B].
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.errors import InvalidRequestError
from gateway.tasks.audio import audio_seconds
from gateway.tasks.base import RunGraphs, TaskInputError
from gateway.tasks.speech import WhisperTask
from gateway.tasks.translation import TranslationTask
from gateway.tasks.vision import DEFAULT_TOP_K, ImageTask, open_image
from gateway.types import NamedTensor, ParamValue, bytes_array


@dataclass(frozen=True)
class TensorInfo:
    """A task-level tensor as reported by model metadata (-1: any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


class TaskIO(Protocol):
    """One task kind's wire contract, bound to one variant's assets."""

    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    size_unit: str | None
    """What :meth:`item_size` counts (the manifest's ``size_unit``); None: items cost alike."""

    def items(self, inputs: Mapping[str, NamedTensor]) -> list[Any]:
        """Check the request's tensors and split them into task items (no heavy decoding)."""
        ...

    def options(self, parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
        """Task options from request parameters (e.g. ``top_k``)."""
        ...

    def item_size(self, item: Any) -> float:
        """What one item costs to serve, in the family's ``size_unit`` (cheap: no decoding)."""
        ...

    def batch_key(self, items: list[Any]) -> Hashable | None:
        """Requests with equal keys may share one task run; None never shares."""
        ...

    def run(self, items: list[Any], run_graph: RunGraphs, options: Mapping[str, Any]) -> list[Any]:
        """Decode and run ``items`` through the task; one result per item."""
        ...

    def pack(self, results: list[Any]) -> list[NamedTensor]:
        """Pack per-item results into output tensors."""
        ...


def _only_input(inputs: Mapping[str, NamedTensor], name: str) -> NamedTensor:
    if set(inputs) != {name}:
        got = ", ".join(sorted(inputs)) or "none"
        raise InvalidRequestError(f"expected exactly one input named '{name}', got: {got}")
    return inputs[name]


def _bytes_items(tensor: NamedTensor) -> list[bytes]:
    """The elements of a BYTES tensor of shape [B] or [B, 1]."""
    shape = tensor.shape
    if len(shape) == 2 and shape[1] == 1:
        shape = shape[:1]
    if len(shape) != 1:
        raise InvalidRequestError(
            f"input '{tensor.name}': BYTES shape must be [B] (one element per item), "
            f"got {list(tensor.shape)}"
        )
    return [bytes(x) for x in tensor.data.reshape(-1)]


def _non_empty(name: str, items: list[Any]) -> list[Any]:
    if not items:
        raise InvalidRequestError(f"input '{name}' holds no items (batch size 0)")
    return items


def _run_task(call: Any) -> list[Any]:
    """Run a task call, turning its input errors into the gateway's 400."""
    try:
        results: list[Any] = call()
    except TaskInputError as exc:
        raise InvalidRequestError(str(exc)) from exc
    return results


def _text_tensor(name: str, texts: list[str]) -> NamedTensor:
    return NamedTensor(name, "BYTES", bytes_array([t.encode("utf-8") for t in texts]))


class ImageIO:
    """``image-labels``: encoded or raw images in, top-k labels and scores out."""

    inputs: tuple[TensorInfo, ...] = (TensorInfo("image", "BYTES", (-1,)),)
    outputs: tuple[TensorInfo, ...] = (
        TensorInfo("labels", "BYTES", (-1, -1)),
        TensorInfo("scores", "FP32", (-1, -1)),
    )
    size_unit: str | None = None

    def __init__(self, assets_dir: Path) -> None:
        """Load the image task from a variant's assets."""
        self.task = ImageTask(assets_dir)

    def items(self, inputs: Mapping[str, NamedTensor]) -> list[Any]:
        """Encoded images (bytes) or uint8 HWC arrays, one per batch row."""
        tensor = _only_input(inputs, "image")
        if tensor.datatype == "BYTES":
            return _non_empty("image", list(_bytes_items(tensor)))
        if tensor.datatype == "UINT8" and tensor.data.ndim in (3, 4):
            images = tensor.data[None] if tensor.data.ndim == 3 else tensor.data
            return _non_empty("image", list(images))
        raise InvalidRequestError(
            f"input 'image' must be BYTES [B] (encoded images) or UINT8 [B,H,W,C] / [H,W,C], "
            f"got {tensor.datatype} {list(tensor.shape)}"
        )

    def options(self, parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
        """``top_k``: labels per image (default 5), a positive integer."""
        value = parameters.get("top_k", DEFAULT_TOP_K)
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidRequestError(
                f"parameter 'top_k' must be a positive integer, got {value!r}"
            )
        return {"top_k": value}

    def item_size(self, item: Any) -> float:
        """Every image costs the same: it is resized to the graph's input."""
        return 1.0

    def batch_key(self, items: list[Any]) -> Hashable | None:
        """Any images batch together (each is resized to the same input)."""
        return ""

    def run(self, items: list[Any], run_graph: RunGraphs, options: Mapping[str, Any]) -> list[Any]:
        """Decode encoded images, then classify the batch with one graph call."""

        def call() -> list[Any]:
            images = [open_image(x) if isinstance(x, bytes) else x for x in items]
            return list(self.task.run(images, run_graph, top_k=int(options["top_k"])))

        return _run_task(call)

    def pack(self, results: list[Any]) -> list[NamedTensor]:
        """``labels`` BYTES [B,k] and ``scores`` FP32 [B,k]."""
        k = min(len(r) for r in results)
        labels = bytes_array([label.encode("utf-8") for r in results for label, _ in r[:k]])
        scores = np.asarray([score for r in results for _, score in r[:k]], dtype=np.float32)
        return [
            NamedTensor("labels", "BYTES", labels.reshape(len(results), k)),
            NamedTensor("scores", "FP32", scores.reshape(len(results), k)),
        ]


class AudioIO:
    """``audio-text``: 16 kHz waveforms or audio files in, transcripts out (Whisper)."""

    inputs: tuple[TensorInfo, ...] = (TensorInfo("audio", "FP32", (-1, -1)),)
    outputs: tuple[TensorInfo, ...] = (TensorInfo("text", "BYTES", (-1,)),)
    size_unit: str | None = "audio_seconds"

    def __init__(self, assets_dir: Path) -> None:
        """Load the speech task from a variant's assets."""
        self.task = WhisperTask(assets_dir)

    def items(self, inputs: Mapping[str, NamedTensor]) -> list[Any]:
        """Waveform rows (float32) or audio files (bytes)."""
        tensor = _only_input(inputs, "audio")
        if tensor.datatype == "BYTES":
            return _non_empty("audio", list(_bytes_items(tensor)))
        if tensor.datatype == "FP32" and tensor.data.ndim in (1, 2):
            rows = tensor.data[None] if tensor.data.ndim == 1 else tensor.data
            return _non_empty("audio", [np.asarray(r, dtype=np.float32) for r in rows])
        raise InvalidRequestError(
            f"input 'audio' must be FP32 [B,N] / [N] samples at 16 kHz or BYTES [B] audio files "
            f"(WAV, FLAC, Ogg), got {tensor.datatype} {list(tensor.shape)}"
        )

    def item_size(self, item: Any) -> float:
        """Seconds of audio in ``item``: from a file's header, or a waveform's sample count.

        Raises:
            InvalidRequestError: The bytes are not an audio file.
        """
        return float(_run_task(lambda: [audio_seconds(item)])[0])

    def options(self, parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
        """No options."""
        return {}

    def batch_key(self, items: list[Any]) -> Hashable | None:
        """Any audio batches together.

        Every window is padded to 30 s on its own, so neighbours do not change a transcript.
        """
        return ""

    def run(self, items: list[Any], run_graph: RunGraphs, options: Mapping[str, Any]) -> list[Any]:
        """Transcribe the batch (the encoder once per 30 s window, the decoder per token)."""
        return _run_task(lambda: list(self.task.run(items, run_graph)))

    def pack(self, results: list[Any]) -> list[NamedTensor]:
        """``text`` BYTES [B]."""
        return [_text_tensor("text", [str(r) for r in results])]


class TextIO:
    """``text-text``: UTF-8 texts in, translations out."""

    inputs: tuple[TensorInfo, ...] = (TensorInfo("text", "BYTES", (-1,)),)
    outputs: tuple[TensorInfo, ...] = (TensorInfo("text", "BYTES", (-1,)),)
    size_unit: str | None = "source_tokens"

    def __init__(self, assets_dir: Path) -> None:
        """Load the translation task from a variant's assets."""
        self.task = TranslationTask(assets_dir)

    def items(self, inputs: Mapping[str, NamedTensor]) -> list[Any]:
        """Texts decoded from UTF-8."""
        tensor = _only_input(inputs, "text")
        if tensor.datatype != "BYTES":
            raise InvalidRequestError(
                f"input 'text' must be BYTES [B] (UTF-8 strings), "
                f"got {tensor.datatype} {list(tensor.shape)}"
            )
        texts = []
        for i, raw in enumerate(_bytes_items(tensor)):
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise InvalidRequestError(f"text {i} is not valid UTF-8: {exc}") from exc
        return _non_empty("text", texts)

    def options(self, parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
        """No options."""
        return {}

    def item_size(self, item: Any) -> float:
        """Tokens of the source text: decoding time grows with them (about 20 µs to count)."""
        return float(len(self.task.processor.encode(" ".join(str(item).split()))))

    def batch_key(self, items: list[Any]) -> Hashable | None:
        """Any texts batch together (the graph masks padding)."""
        return ""

    def run(self, items: list[Any], run_graph: RunGraphs, options: Mapping[str, Any]) -> list[Any]:
        """Translate the batch (the greedy decode loop calls the graph per token)."""
        return _run_task(lambda: list(self.task.run(items, run_graph)))

    def pack(self, results: list[Any]) -> list[NamedTensor]:
        """``text`` BYTES [B]."""
        return [_text_tensor("text", [str(r) for r in results])]


TASK_IO: dict[str, type[ImageIO] | type[AudioIO] | type[TextIO]] = {
    "image-labels": ImageIO,
    "audio-text": AudioIO,
    "text-text": TextIO,
}
"""The wire contract of each manifest ``task``."""


def task_io(task: str, assets_dir: Path) -> TaskIO:
    """Build the wire contract of ``task`` over a variant's asset directory.

    Raises:
        ValueError: Unknown task kind, or its assets are missing or invalid.
    """
    cls = TASK_IO.get(task)
    if cls is None:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASK_IO)}")
    try:
        return cls(assets_dir)
    except (OSError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot load {task} assets from {assets_dir.name}: {exc}") from exc
