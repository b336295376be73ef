"""Write variants into a Triton model repository, configs generated through Triton's proto.

Layout: ``<repo>/<family>__<variant>/config.pbtxt`` and ``1/model.onnx`` (or ``model.plan``)
plus the family's asset files in ``1/``; ``<repo>/<family>.manifest.json`` beside them.
A family's directories are staged under a hidden name and renamed into place, and the
manifest is written last, so a reader following the manifest never sees a half-built family.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from gateway.manifest import TensorSpec

Flavour = Literal["onnxruntime", "tensorrt", "python"]
ARTIFACT_FILE = {"onnxruntime": "model.onnx", "tensorrt": "model.plan", "python": "model.onnx"}
"""File name of the graph in a version directory, per backend."""
VERSION = "1"
_DTYPE = {
    "FP32": "TYPE_FP32",
    "FP16": "TYPE_FP16",
    "INT64": "TYPE_INT64",
    "INT32": "TYPE_INT32",
    "UINT8": "TYPE_UINT8",
    "BYTES": "TYPE_STRING",
}


def triton_config(
    name: str,
    flavour: Flavour,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    max_batch_size: int,
    max_queue_delay_us: int = 2000,
) -> model_config_pb2.ModelConfig:
    """A validated Triton ModelConfig; an invalid field fails here, at build time."""

    def tensors(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": t.name, "data_type": _DTYPE[t.datatype], "dims": t.dims} for t in specs]

    # The python flavour runs ONNX Runtime on the CPU; elsewhere Triton picks GPU if present.
    kind = "KIND_CPU" if flavour == "python" else "KIND_AUTO"
    config: dict[str, Any] = {
        "name": name,
        "max_batch_size": max_batch_size,
        "input": tensors(inputs),
        "output": tensors(outputs),
        "instance_group": [{"count": 1, "kind": kind}],
    }
    if max_batch_size > 0:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": max_queue_delay_us}
    if flavour == "tensorrt":
        config["platform"] = "tensorrt_plan"
    else:
        config["backend"] = "python" if flavour == "python" else "onnxruntime"
    if flavour == "python":
        config["parameters"] = {"onnx_file": {"string_value": ARTIFACT_FILE["python"]}}
    message = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    return message


def config_text(config: model_config_pb2.ModelConfig) -> str:
    """The config.pbtxt text of a ModelConfig."""
    return str(text_format.MessageToString(config))


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text; raises on unknown fields."""
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stage_variant(
    staging: Path,
    config: model_config_pb2.ModelConfig,
    graph: Path,
    assets_dir: Path,
    flavour: Flavour = "onnxruntime",
) -> Path:
    """Lay out one Triton model directory under ``staging``; returns it."""
    model_dir = staging / str(config.name)
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
    shutil.copyfile(graph, version_dir / ARTIFACT_FILE[flavour])
    for asset in sorted(assets_dir.iterdir()):
        if asset.is_file():
            shutil.copyfile(asset, version_dir / asset.name)
    return model_dir


def new_staging_dir(repository: Path, family: str) -> Path:
    """A hidden directory inside the repository (same filesystem, so renames are atomic)."""
    staging = repository / f".staging-{family}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


def publish_family(repository: Path, family: str, staging: Path) -> list[str]:
    """Move staged model directories into place, replacing this family's old ones.

    Directories of the family that the new build no longer has are removed too.
    Returns the published model names.
    """
    new_names = sorted(p.name for p in staging.iterdir() if p.is_dir())
    trash = repository / f".trash-{family}-{uuid.uuid4().hex[:8]}"
    trash.mkdir()
    for old in repository.glob(f"{family}__*"):
        if old.is_dir():
            old.rename(trash / old.name)
    for name in new_names:
        (staging / name).rename(repository / name)
    shutil.rmtree(trash)
    shutil.rmtree(staging)
    return new_names
