"""Write variants into a Triton model repository (layout: :mod:`gateway.layout`).

Each variant is a model directory with its ``config.pbtxt`` (:mod:`builders.triton.model_config`)
and a version directory holding the graph and the family's asset files. A family's
directories are staged under a hidden name and renamed into place, and the manifest is
written last, so a reader following the manifest never sees a half-built family.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from builders.triton.model_config import TritonModel, write_config
from gateway.layout import VERSION


def stage_variant(staging: Path, model: TritonModel, graph: Path, assets_dir: Path) -> Path:
    """Lay out one Triton model directory (production config) under ``staging``; returns it."""
    model_dir = staging / model.name
    version_dir = model_dir / VERSION
    version_dir.mkdir(parents=True)
    write_config(model_dir, model)
    shutil.copyfile(graph, version_dir / model.graph_file)
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
