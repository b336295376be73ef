"""The model repository's layout: every fact the builders and the gateway share, defined once.

A repository holds one Triton model directory per variant and one manifest per family::

    <repository>/<family>.manifest.json
    <repository>/<family>__<variant>/config.pbtxt
    <repository>/<family>__<variant>/1/model.onnx   (or model.plan for TensorRT)
    <repository>/<family>__<variant>/1/<asset files of the family>

A variant of several graphs (the manifest's ``graphs``, e.g. Whisper's encoder and decoder)
has one such directory per graph instead, each a Triton model of its own with the assets::

    <repository>/<family>__<variant>__<graph>/config.pbtxt
    <repository>/<family>__<variant>__<graph>/1/model.onnx

The builders write it and the gateway reads it through the names below, so the two can
never disagree about where a graph lives, how its hash is taken or how a KServe datatype is
spelled in a Triton model configuration.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args

from gateway.tasks.base import MAIN_GRAPH as MAIN_GRAPH

VERSION = "1"
"""The one model version directory of every variant (and the version the gateway serves)."""
CONFIG_FILE = "config.pbtxt"
"""Triton's model configuration, in each model directory."""

Runtime = Literal["onnx", "tensorrt"]
"""What runs a variant's graph: ONNX Runtime (``model.onnx``) or TensorRT (``model.plan``)."""
RUNTIMES: tuple[Runtime, ...] = get_args(Runtime)
GRAPH_FILES: Mapping[Runtime, str] = {"onnx": "model.onnx", "tensorrt": "model.plan"}
"""Graph file name in a version directory, per manifest ``runtime``."""


GRAPH_SEPARATOR = "__"
"""Joins a variant's model name and a graph name: ``speech__fp32__encoder``."""


def graph_model_name(model_name: str, graph: str = MAIN_GRAPH) -> str:
    """The Triton model that serves ``graph`` of a variant (the variant's own for one graph)."""
    return model_name if graph == MAIN_GRAPH else f"{model_name}{GRAPH_SEPARATOR}{graph}"


def model_dir(repository: Path, model_name: str) -> Path:
    """The Triton model directory of a variant (``model_name`` is ``family__variant``)."""
    return repository / model_name


def version_dir(repository: Path, model_name: str) -> Path:
    """The directory holding a variant's graph and assets."""
    return model_dir(repository, model_name) / VERSION


def graph_path(
    repository: Path, model_name: str, runtime: Runtime, graph: str = MAIN_GRAPH
) -> Path:
    """A variant's graph file (``graph`` names one of a multi-graph variant's)."""
    return version_dir(repository, graph_model_name(model_name, graph)) / GRAPH_FILES[runtime]


def runtime_of(graph: Path) -> Runtime:
    """The runtime a graph file is for, from its name.

    Raises:
        ValueError: The name is none of :data:`GRAPH_FILES`.
    """
    for runtime, file_name in GRAPH_FILES.items():
        if graph.name == file_name:
            return runtime
    raise ValueError(f"{graph.name} is not a graph file ({', '.join(GRAPH_FILES.values())})")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks (the manifest's artifact hashes)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def config_datatype(datatype: str) -> str:
    """A KServe datatype as Triton's ``ModelConfig`` names it: ``FP32`` → ``TYPE_FP32``.

    ``BYTES`` is the one exception: Triton's configuration calls it ``TYPE_STRING``.
    """
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
