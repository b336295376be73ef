"""Derive the python-backend flavour of a repository, for Triton builds without ONNX Runtime.

Every published ONNX variant becomes a python-backend model of the same name and tensors,
whose ``model.py`` runs the same ``model.onnx`` through ONNX Runtime (a variant of several
graphs: one such model per graph, ``<family>__<variant>__<graph>``). Its configuration
comes from the same :class:`~builders.triton.model_config.TritonModel` as the production one.
TensorRT variants have no python flavour and are left out.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection
from pathlib import Path

from builders.triton.model_config import TritonModel, write_config
from gateway.layout import version_dir
from gateway.manifest import MANIFEST_SUFFIX, find_manifests, load_manifest

PYTHON_MODEL = Path(__file__).with_name("python_model.py")


def write_python_flavour(
    repository: Path,
    out_dir: Path,
    link: bool = True,
    families: Collection[str] | None = None,
) -> list[str]:
    """Write the python-backend flavour of ``repository`` into ``out_dir``.

    Args:
        repository: a repository written by the builders (configs + manifests).
        out_dir: target directory, created if missing; existing model dirs are replaced.
        link: symlink graphs instead of copying them (Triton follows links).
        families: only these families (their manifests alone are read); None: all.

    Returns:
        The model names written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    for path in find_manifests(repository):
        if families is not None and path.name.removesuffix(MANIFEST_SUFFIX) not in families:
            continue
        manifest = load_manifest(path)
        for variant in manifest.published():
            if variant.runtime != "onnx":
                continue
            for graph in manifest.graph_names():
                model = TritonModel.of_variant(manifest, variant, graph)
                _write_model(model, variant.graph_path(repository, graph), out_dir, link)
                written.append(model.name)
    return written


def _write_model(model: TritonModel, source: Path, out_dir: Path, link: bool) -> None:
    """One python-backend model directory running ``source``."""
    target_dir = out_dir / model.name
    if target_dir.exists():
        shutil.rmtree(target_dir)
    target = version_dir(out_dir, model.name)
    target.mkdir(parents=True)
    write_config(target_dir, model, "python")
    shutil.copyfile(PYTHON_MODEL, target / "model.py")
    graph = target / model.graph_file
    if link:
        graph.symlink_to(source.resolve())
    else:
        shutil.copyfile(source, graph)
