"""Whisper → two ONNX graphs, ``encoder`` and ``decoder`` (tensors: ``gateway.tasks.speech``).

The encoder graph also runs every decoder layer's cross-attention key and value projections,
so they are computed once per 30 s window rather than once per token. The decoder graph
takes the new tokens and the self-attention cache and returns logits and the grown cache.
The token embedding is one initializer in the decoder graph, read by the embedding Gather
and, transposed by the Gemm itself, by the output projection: the tied table is stored once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from builders.zoo.speech.model import Whisper
from gateway.tasks.base import MAIN_GRAPH
from gateway.tasks.base import Tensor as Array
from gateway.tasks.log_mel import WINDOW_FRAMES
from gateway.tasks.speech import DECODER, ENCODER

OPSET = 17
GRAPH_FILES = {ENCODER: "encoder.onnx", DECODER: "decoder.onnx"}
"""File of each graph in a variant's version directory."""
ENCODER_INPUTS, ENCODER_OUTPUTS = ["mel"], ["cross_keys", "cross_values"]
DECODER_INPUTS = ["tokens", "self_keys", "self_values", "cross_keys", "cross_values"]
DECODER_OUTPUTS = ["logits", "self_keys_out", "self_values_out"]


class EncoderGraph(nn.Module):
    """``mel`` → ``cross_keys``, ``cross_values``."""

    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of one batch of mel windows."""
        return self.model.encode_cross(mel)


class DecoderGraph(nn.Module):
    """``tokens``, caches, cross keys/values → ``logits`` and the grown caches."""

    def __init__(self, model: Whisper) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, tokens: Tensor, self_keys: Tensor, self_values: Tensor, ck: Tensor, cv: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One decoder step."""
        return self.model.decode_step(tokens, self_keys, self_values, ck, cv)


def export_encoder(model: Whisper, path: Path) -> None:
    """Export the encoder graph (batch dynamic, one 30 s window of mel frames)."""
    model.eval()
    mel = torch.zeros(1, model.dims.n_mels, WINDOW_FRAMES)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        EncoderGraph(model),
        (mel,),
        str(path),
        input_names=ENCODER_INPUTS,
        output_names=ENCODER_OUTPUTS,
        dynamic_axes={name: {0: "batch"} for name in ENCODER_INPUTS + ENCODER_OUTPUTS},
        opset_version=OPSET,
        dynamo=False,
    )


def export_decoder(model: Whisper, path: Path) -> None:
    """Export the decoder step graph (batch, new tokens and cached positions dynamic)."""
    model.eval()
    d = model.dims
    head_dim = d.n_text_state // d.n_text_head
    tokens = torch.tensor([[50257, 50362], [50257, 50362]])
    past = torch.zeros(2, d.n_text_layer, d.n_text_head, 3, head_dim)
    cross = torch.zeros(2, d.n_text_layer, d.n_text_head, d.n_audio_ctx, head_dim)
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = {
        "tokens": {0: "batch", 1: "new"},
        "self_keys": {0: "batch", 3: "past"},
        "self_values": {0: "batch", 3: "past"},
        "cross_keys": {0: "batch"},
        "cross_values": {0: "batch"},
        "logits": {0: "batch", 1: "new"},
        "self_keys_out": {0: "batch", 3: "total"},
        "self_values_out": {0: "batch", 3: "total"},
    }
    torch.onnx.export(
        DecoderGraph(model),
        (tokens, past, past, cross, cross),
        str(path),
        input_names=DECODER_INPUTS,
        output_names=DECODER_OUTPUTS,
        dynamic_axes=dynamic,
        opset_version=OPSET,
        dynamo=False,
    )


def export_graphs(model: Whisper, directory: Path) -> dict[str, Path]:
    """Export both graphs into ``directory``; returns each graph's file by graph name."""
    paths = {name: directory / file for name, file in GRAPH_FILES.items()}
    export_encoder(model, paths[ENCODER])
    export_decoder(model, paths[DECODER])
    return paths


def torch_runner(model: Whisper) -> TorchGraphs:
    """A graph runner over the torch module with the ONNX graphs' names and tensors."""
    return TorchGraphs(model)


class TorchGraphs:
    """Runs ``encoder`` / ``decoder`` in torch, tensors in and out as numpy."""

    def __init__(self, model: Whisper) -> None:
        self.model = model.eval()

    def __call__(self, inputs: Mapping[str, Array], graph: str = MAIN_GRAPH) -> Mapping[str, Array]:
        """Run one graph by name."""
        feeds = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
        with torch.inference_mode():
            if graph == ENCODER:
                keys, values = self.model.encode_cross(feeds["mel"])
                return {"cross_keys": keys.numpy(), "cross_values": values.numpy()}
            if graph == DECODER:
                outs = self.model.decode_step(*(feeds[n] for n in DECODER_INPUTS))
                return {name: o.numpy() for name, o in zip(DECODER_OUTPUTS, outs, strict=True)}
        raise KeyError(f"no graph named {graph!r}; Whisper has {ENCODER} and {DECODER}")
