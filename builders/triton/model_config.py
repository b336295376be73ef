"""Triton's ``config.pbtxt``, generated from one typed description of a variant's model.

:class:`TritonModel` describes a variant's model once (name, runtime, tensors, batching,
instances); :func:`model_config` turns it into the configuration of a *flavour*:

- ``production``: ONNX graphs on Triton's ``onnxruntime`` backend, TensorRT plans on its
  ``tensorrt_plan`` platform, each on the device Triton picks;
- ``python``: Triton's python backend running the ONNX graph through ONNX Runtime on the CPU
  (``python_model.py``), for Triton builds without the ONNX Runtime backend.

Every configuration goes through the real proto (``json_format.ParseDict`` into
``model_config_pb2.ModelConfig``), so an invalid field fails at build time, not at load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from gateway.layout import (
    CONFIG_FILE,
    GRAPH_FILES,
    MAIN_GRAPH,
    Runtime,
    config_datatype,
    graph_model_name,
)
from gateway.manifest import FamilyManifest, TensorSpec, Variant

Flavour = Literal["production", "python"]
"""Which Triton build the configuration is for (see the module docstring)."""
DEFAULT_QUEUE_DELAY_US = 2000
"""Longest time Triton's dynamic batcher holds a request to batch it with others."""


@dataclass(frozen=True)
class TritonModel:
    """One variant as a Triton model, whatever flavour serves it.

    Attributes:
        name: Triton model name, ``family__variant``.
        runtime: What runs the graph (``onnx`` or ``tensorrt``).
        inputs: Graph inputs, dims without the batch dimension.
        outputs: Graph outputs, dims without the batch dimension.
        max_batch_size: Rows one execution may take; 0 disables Triton's batching.
        max_queue_delay_us: Dynamic batching delay (with ``max_batch_size`` > 0).
        instances: Model instances executing in parallel.
    """

    name: str
    runtime: Runtime
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US
    instances: int = 1

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a Triton model needs a name")
        if self.runtime not in GRAPH_FILES:
            raise ValueError(f"{self.name}: unknown runtime {self.runtime!r}")
        if not self.inputs or not self.outputs:
            raise ValueError(f"{self.name}: a Triton model needs inputs and outputs")
        if self.max_batch_size < 0 or self.max_queue_delay_us < 0 or self.instances < 1:
            raise ValueError(
                f"{self.name}: need max_batch_size >= 0, max_queue_delay_us >= 0, instances >= 1"
            )

    @classmethod
    def of_variant(
        cls, manifest: FamilyManifest, variant: Variant, graph: str = MAIN_GRAPH
    ) -> TritonModel:
        """The Triton model of a manifest's variant (of one of its graphs, if it has several)."""
        spec = next((g for g in manifest.graphs if g.name == graph), None)
        if spec is None and graph != MAIN_GRAPH:
            raise ValueError(f"{variant.model_name} has no graph {graph!r}")
        return cls(
            name=graph_model_name(variant.model_name, graph),
            runtime=variant.runtime,
            inputs=tuple(spec.inputs if spec else manifest.inputs),
            outputs=tuple(spec.outputs if spec else manifest.outputs),
            max_batch_size=manifest.max_batch_size,
        )

    @property
    def graph_file(self) -> str:
        """The graph's file name in the version directory."""
        return GRAPH_FILES[self.runtime]


def _tensors(specs: tuple[TensorSpec, ...], max_batch_size: int) -> list[dict[str, Any]]:
    # With batching Triton adds the batch dimension itself; without, dims must carry it
    # (the graphs keep their batch dimension either way, and the gateway always sends one).
    return [
        {
            "name": t.name,
            "data_type": config_datatype(t.datatype),
            "dims": list(t.dims) if max_batch_size > 0 else [-1, *t.dims],
        }
        for t in specs
    ]


def model_config(
    model: TritonModel, flavour: Flavour = "production"
) -> model_config_pb2.ModelConfig:
    """The validated ``ModelConfig`` of ``model`` in ``flavour``.

    Raises:
        ValueError: The python flavour was asked for a graph it cannot run (TensorRT).
        google.protobuf.json_format.ParseError: A field Triton's proto does not accept.
    """
    config: dict[str, Any] = {
        "name": model.name,
        "max_batch_size": model.max_batch_size,
        "input": _tensors(model.inputs, model.max_batch_size),
        "output": _tensors(model.outputs, model.max_batch_size),
    }
    if model.max_batch_size > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": model.max_queue_delay_us}
    if flavour == "python":
        if model.runtime != "onnx":
            raise ValueError(f"{model.name}: the python flavour runs ONNX graphs only")
        config["backend"] = "python"
        config["parameters"] = {"onnx_file": {"string_value": model.graph_file}}
        kind = "KIND_CPU"  # ONNX Runtime on the CPU inside the python backend
    elif model.runtime == "tensorrt":
        config["platform"] = "tensorrt_plan"
        kind = "KIND_GPU"  # an engine runs on the GPU it was built for
    else:
        config["backend"] = "onnxruntime"
        kind = "KIND_AUTO"  # the GPU where Triton has one, else the CPU
    config["instance_group"] = [{"count": model.instances, "kind": kind}]
    return json_format.ParseDict(config, model_config_pb2.ModelConfig())


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """The ``config.pbtxt`` text of a ModelConfig."""
    return str(text_format.MessageToString(config))


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse ``config.pbtxt`` text; raises on unknown fields."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def write_config(model_dir: Path, model: TritonModel, flavour: Flavour = "production") -> Path:
    """Write ``model``'s ``config.pbtxt`` in ``flavour`` into ``model_dir``; returns it."""
    path = model_dir / CONFIG_FILE
    path.write_text(config_text(model_config(model, flavour)), encoding="utf-8")
    return path
