"""The per-family manifest: the builders write it, the gateway routes on it.

One JSON file per family, ``<repository>/<family>.manifest.json``, beside the Triton model
directories ``<family>__<variant>/``. Files that people and tools write are strict
(``extra="forbid"``), so a typo is an error rather than silently ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.layout import Runtime, graph_path
from gateway.tasks.base import MAIN_GRAPH

SCHEMA_VERSION: Literal[1] = 1
MANIFEST_SUFFIX = ".manifest.json"
VARIANT_SEPARATOR = "__"
"""Joins family and variant into a Triton model name: ``vision__int8``."""

Datatype = Literal["FP32", "FP16", "INT64", "INT32", "UINT8", "BYTES"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def model_name(family: str, variant: str) -> str:
    """The Triton model name of a variant, e.g. ``model_name("vision", "int8")``."""
    return f"{family}{VARIANT_SEPARATOR}{variant}"


def split_model_name(name: str) -> tuple[str, str | None]:
    """Split ``"vision__int8"`` into ``("vision", "int8")``; a bare family gets ``None``."""
    family, sep, variant = name.partition(VARIANT_SEPARATOR)
    return family, (variant if sep else None)


class TensorSpec(_Strict):
    """One input or output of a variant's graph (batch dimension excluded)."""

    name: str
    datatype: Datatype
    dims: list[int] = Field(description="Shape without the batch dimension; -1 is dynamic.")


class GraphSpec(_Strict):
    """One graph of a multi-graph variant (e.g. Whisper's encoder and decoder).

    Every variant of the family has the same graphs with the same tensors. Each graph is its
    own Triton model, ``<family>__<variant>__<graph>``, and is one runtime request per call.
    """

    name: str = Field(description="Graph name the task code calls, e.g. 'encoder'.")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str = Field(default="", description="What the graph computes, in words.")


class Artifact(_Strict):
    """A file of a variant, relative to the repository root."""

    path: str
    sha256: str
    size_bytes: int = Field(ge=0)


class LatencyPoint(_Strict):
    """Latency of one (batch size, concurrency) point, warm-up runs excluded."""

    batch_size: int = Field(ge=1)
    concurrency: int = Field(ge=1)
    runs: int = Field(ge=1, description="Timed runs behind the percentiles.")
    p50_s: float = Field(ge=0)
    p95_s: float = Field(ge=0)
    p99_s: float = Field(ge=0)
    throughput_per_s: float = Field(ge=0, description="Items per second at this point.")
    graph_p50_s: float | None = Field(
        default=None,
        ge=0,
        description="Median time per request spent inside the graph; the rest of p50_s is the "
        "task's pre/post-processing (decoding, features, the autoregressive loop).",
    )


class SizePoint(_Strict):
    """Latency at batch 1, concurrency 1 of items of about one size (see ``size_unit``)."""

    size: float = Field(ge=0, description="Median item size of the items behind this point.")
    runs: int = Field(ge=1, description="Timed runs behind the percentiles.")
    p50_s: float = Field(ge=0)
    p95_s: float = Field(ge=0)


class Variant(_Strict):
    """One size variant of a family, with everything measured about it."""

    name: str = Field(description="Variant name, e.g. 'fp32', 'int8', 'pruned-50-int8'.")
    model_name: str = Field(description="Triton model name: '<family>__<variant>'.")
    status: Literal["published", "rejected"]
    rejection_reason: str | None = None
    recommended: bool = Field(description="On the size/latency/quality Pareto frontier.")
    runtime: Runtime = "onnx"
    precision: Literal["fp32", "fp16", "int8"]
    quantization: Literal["none", "static-qdq", "dynamic", "entropy-calibration"] = Field(
        default="none",
        description="How int8 was made: ONNX Runtime's static QDQ or dynamic quantization, "
        "or TensorRT's entropy calibration on the calibration split.",
    )
    sparsity: Literal["none", "2:4"] = Field(
        default="none",
        description="'2:4': two of every four weights along the reduction axis are zero "
        "where a layer allows, for TensorRT's sparse kernels.",
    )
    pruning_ratio: float = Field(ge=0, lt=1)
    artifacts: list[Artifact]
    size_bytes: int = Field(ge=0, description="Bytes of the graph file.")
    parameters: int = Field(ge=0)
    metrics: dict[str, float] = Field(description="Task metrics in points, e.g. wer, cer.")
    quality: float = Field(
        description="The primary metric as higher-is-better points (100 - WER for WER); "
        "the value that a request's min_accuracy is compared with."
    )
    quality_drop: float = Field(description="Points of quality lost against fp32.")
    latency: list[LatencyPoint]
    size_latency: list[SizePoint] = Field(
        default_factory=list,
        description="Latency against item size at batch 1 (items grouped by size), so routing "
        "can predict a request's time from its size; empty when the task's items all cost "
        "the same.",
    )
    resident_memory_bytes: int = Field(
        ge=0, description="Resident memory growth to load and run one batch."
    )
    gpu_memory_bytes: int = Field(
        ge=0,
        description="Device memory to hold and run the variant at the family's largest batch "
        "and longest inputs: gpu_weights_bytes + gpu_activations_bytes. Measured for "
        "TensorRT engines on the GPU that built them, else estimated from the graph (see "
        "gpu_memory_source). The runtime's own per-instance memory is not included: it is "
        "the family's runtime_memory_bytes.",
    )
    gpu_memory_source: Literal["measured", "estimated"] = Field(
        default="estimated",
        description="'measured': free device memory before minus after loading the engine "
        "and creating one execution context, in a fresh process. 'estimated': the sum of "
        "the two terms below, computed from the ONNX graph.",
    )
    gpu_weights_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Weights at the precision the variant runs in. Estimated: every "
        "initializer and Constant at its stored dtype (fp16 graphs store half the bytes, "
        "int8 a quarter plus scales); tensors computed from weights alone, such as a "
        "DequantizeLinear of an int8 weight, are not counted again. Measured: what the "
        "engine took beyond its activation memory.",
    )
    gpu_activations_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Peak activation memory. Estimated: with shapes from ONNX shape "
        "inference at the family's largest batch and longest inputs, the most bytes of "
        "tensors alive at once while walking the graph's nodes in order (inputs and outputs "
        "included; a DequantizeLinear of an activation counts at its int8 input's size, as "
        "runtimes fuse it into its consumer). Measured: the execution context's device "
        "memory (ICudaEngine.device_memory_size_v2).",
    )
    notes: list[str] = Field(default_factory=list, description="How it was made, in words.")

    def graph_path(self, repository: Path, graph: str = MAIN_GRAPH) -> Path:
        """This variant's graph file (``graph``: one of several) in ``repository``."""
        return graph_path(repository, self.model_name, self.runtime, graph)

    def latency_at(self, batch_size: int = 1, concurrency: int = 1) -> LatencyPoint | None:
        """The profiled point closest to (batch_size, concurrency), preferring exact matches."""
        if not self.latency:
            return None
        return min(
            self.latency,
            key=lambda p: (abs(p.batch_size - batch_size), abs(p.concurrency - concurrency)),
        )


class MetricInfo(_Strict):
    """The family's primary metric."""

    name: str
    higher_is_better: bool


class FamilyManifest(_Strict):
    """Everything the gateway needs to serve and route one family."""

    schema_version: Literal[1] = SCHEMA_VERSION
    family: str
    task: Literal["image-labels", "audio-text", "text-text"]
    metric: MetricInfo
    max_batch_size: int = Field(ge=0)
    size_unit: str | None = Field(
        default=None,
        description="What an item's size counts (e.g. 'audio_seconds', 'source_tokens'), the "
        "unit of every size_latency point; None when items all cost the same.",
    )
    profiled_item_size: float | None = Field(
        default=None,
        ge=0,
        description="Median item size of the items behind the latency points, in size_unit.",
    )
    inputs: list[TensorSpec] = Field(description="The single graph's inputs (empty with graphs).")
    outputs: list[TensorSpec] = Field(description="The single graph's outputs (empty with graphs).")
    graphs: list[GraphSpec] = Field(
        default_factory=list,
        exclude_if=lambda graphs: not graphs,
        description="The graphs of multi-graph variants; absent for one-graph variants, whose "
        "graph is 'model' with the inputs and outputs above.",
    )
    assets: list[str] = Field(description="Asset files copied beside each graph.")
    built_at: str = Field(description="UTC ISO-8601 time of the build.")
    source: str = Field(description="Where the fp32 model came from (checkpoint and hash).")
    runtime_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="Memory one model instance's runtime takes whatever the variant (its "
        "session, arenas, context), reported once here rather than in every variant's "
        "gpu_memory_bytes: the resident growth of an ONNX Runtime session loading and "
        "running a one-node graph, measured on the build machine. A deployment adds it once "
        "per loaded model instance.",
    )
    variants: list[Variant]

    @model_validator(mode="after")
    def _check_variants(self) -> FamilyManifest:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate variant names in {self.family}: {names}")
        for v in self.variants:
            if v.model_name != model_name(self.family, v.name):
                raise ValueError(
                    f"variant {v.name}: model_name must be {model_name(self.family, v.name)}"
                )
        return self

    def graph_names(self) -> list[str]:
        """The graph names of every variant: ``["model"]`` unless ``graphs`` lists several."""
        return [g.name for g in self.graphs] or [MAIN_GRAPH]

    def published(self) -> list[Variant]:
        """Variants the gateway may serve."""
        return [v for v in self.variants if v.status == "published"]

    def variant(self, name: str) -> Variant:
        """Look a variant up by name; KeyError if absent."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)


def manifest_path(repository: Path, family: str) -> Path:
    """Where a family's manifest lives in a repository."""
    return repository / f"{family}{MANIFEST_SUFFIX}"


def load_manifest(path: Path) -> FamilyManifest:
    """Read and validate one manifest file."""
    return FamilyManifest.model_validate_json(path.read_text(encoding="utf-8"))


def find_manifests(repository: Path) -> list[Path]:
    """All manifest files in a repository, sorted by name."""
    return sorted(repository.glob(f"*{MANIFEST_SUFFIX}"))


def write_manifest(repository: Path, manifest: FamilyManifest) -> Path:
    """Write a manifest atomically (temp file + rename), so readers never see half of one."""
    path = manifest_path(repository, manifest.family)
    text = json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n"
    fd, tmp = tempfile.mkstemp(dir=repository, prefix=f".{manifest.family}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
