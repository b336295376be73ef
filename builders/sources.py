"""Where a family's fp32 model comes from: the zoo, or the user's own model.

A user model must follow the family's tensor contract (ARCHITECTURE.md): the same input and
output names, dtypes and layout, so the family's task code, metric and calibration data apply.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx
import torch
from safetensors.torch import load_file
from torch import nn

from builders.zoo.api import ZooFamily

SourceKind = Literal["zoo", "torch", "torchscript", "onnx", "directory"]
"""``directory``: a model folder the family reads itself (speech: a local Hugging Face
Whisper directory, or a CTranslate2 one)."""


class SourceError(ValueError):
    """A model source that cannot be used; the message says why."""


@dataclass(frozen=True)
class ModelSource:
    """A model to build variants from."""

    kind: SourceKind = "zoo"
    path: Path | None = None
    """Weights (torch: .safetensors or .pt state dict), TorchScript file or ONNX file."""
    factory: str | None = None
    """For kind 'torch': ``package.module:callable`` returning an nn.Module."""

    def __post_init__(self) -> None:
        if self.kind != "zoo" and self.path is None:
            raise SourceError(f"a {self.kind} source needs a path")
        if self.path is not None and not self.path.exists():
            raise SourceError(f"model file not found: {self.path}")
        if self.kind == "torch" and (self.factory is None or ":" not in self.factory):
            raise SourceError("a torch source needs factory='package.module:callable'")

    def describe(self) -> str:
        """One line for the manifest's ``source`` field."""
        if self.kind == "zoo":
            return "zoo checkpoint"
        return f"{self.kind}:{self.path.name if self.path else ''}"


def load_torch_module(source: ModelSource, family: ZooFamily) -> nn.Module | None:
    """The source as a torch module in eval mode, or None for an ONNX source."""
    if source.kind == "zoo":
        return family.load()
    if source.kind == "directory":
        assert source.path is not None
        loader = getattr(family, "load_directory", None)
        if loader is None:
            raise SourceError(f"the {family.name} family does not read model directories")
        try:
            module: nn.Module = loader(source.path)
        except ValueError as exc:
            raise SourceError(str(exc)) from exc
        return module.eval()
    if source.kind == "torchscript":
        assert source.path is not None
        scripted: nn.Module = torch.jit.load(str(source.path), map_location="cpu")  # type: ignore[no-untyped-call]
        return scripted.eval()
    if source.kind == "torch":
        assert source.path is not None and source.factory is not None
        module_name, _, attr = source.factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise SourceError(f"cannot import factory {source.factory}: {exc}") from exc
        module = factory()
        if not isinstance(module, nn.Module):
            raise SourceError(f"factory {source.factory} returned {type(module).__name__}")
        state = (
            load_file(str(source.path))
            if source.path.suffix == ".safetensors"
            else torch.load(str(source.path), map_location="cpu", weights_only=True)
        )
        try:
            module.load_state_dict(state)
        except RuntimeError as exc:
            raise SourceError(f"weights do not fit {source.factory}: {exc}") from exc
        return module.eval()
    return None


def check_contract(graph: Path, input_names: list[str], output_names: list[str]) -> None:
    """Raise SourceError unless the graph's I/O names are the family's."""
    model = onnx.load(str(graph), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in initializers]
    outputs = [o.name for o in model.graph.output]
    if sorted(inputs) != sorted(input_names) or sorted(outputs) != sorted(output_names):
        raise SourceError(
            f"graph I/O {inputs} -> {outputs} does not match the family's "
            f"{input_names} -> {output_names}"
        )
