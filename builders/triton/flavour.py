"""Derive the python-backend flavour of a repository, for Triton builds without ONNX Runtime.

Every published ONNX variant becomes a python-backend model of the same name and tensors,
whose ``model.py`` runs the same ``model.onnx`` through ONNX Runtime.
"""

from __future__ import annotations

import shutil
from collections.abc import Collection, Sequence
from pathlib import Path

from builders.repository import ARTIFACT_FILE, VERSION, config_text, triton_config
from gateway.manifest import MANIFEST_SUFFIX, TensorSpec, find_manifests, load_manifest

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
            source = repository / variant.model_name / VERSION / ARTIFACT_FILE["onnxruntime"]
            target_dir = out_dir / variant.model_name
            if target_dir.exists():
                shutil.rmtree(target_dir)
            version_dir = target_dir / VERSION
            version_dir.mkdir(parents=True)
            config = triton_config(
                variant.model_name,
                "python",
                _with_batch_dim(manifest.inputs, manifest.max_batch_size),
                _with_batch_dim(manifest.outputs, manifest.max_batch_size),
                manifest.max_batch_size,
            )
            (target_dir / "config.pbtxt").write_text(config_text(config), encoding="utf-8")
            shutil.copyfile(PYTHON_MODEL, version_dir / "model.py")
            graph = version_dir / ARTIFACT_FILE["python"]
            if link:
                graph.symlink_to(source.resolve())
            else:
                shutil.copyfile(source, graph)
            written.append(variant.model_name)
    return written


def _with_batch_dim(specs: Sequence[TensorSpec], max_batch_size: int) -> list[TensorSpec]:
    """Manifest dims exclude the batch dimension; without batching Triton wants it in dims.

    The graphs keep their batch dimension either way, and the gateway always sends one.
    """
    if max_batch_size > 0:
        return list(specs)
    return [spec.model_copy(update={"dims": [-1, *spec.dims]}) for spec in specs]
