"""TensorRT variants in a manifest: served through Triton, skipped by the embedded backend.

The repository holds an ONNX fp32 and a TensorRT ``trt-fp16`` variant (its plan is not a
real engine: no TensorRT exists here, and none of these backends may run it anyway). The
embedded backend reports the engine unavailable with the reason; the Triton backend accepts
it, never hands it to its embedded fallback, and asks the real Triton server to load it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from builders.triton.server import free_port
from gateway.backends.embedded import EmbeddedBackend
from gateway.backends.runtimes import runtimes_of
from gateway.backends.triton import TritonBackend
from gateway.manifest import TensorSpec
from gateway.registry import Registry
from tests.support.repo_fixture import Spec, image_assets, image_graph, write_family
from tests.support.triton import python_flavour

FAMILY = "mixed"


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    write_family(
        repo,
        FAMILY,
        "image-labels",
        image_assets(),
        [
            Spec("fp32", image_graph(), 90.0, 8.0, 0.004),
            Spec(
                "trt-fp16", b"serialised engine", 89.5, 4.0, 0.001, "published", "fp16", "tensorrt"
            ),
        ],
        [TensorSpec(name="images", datatype="FP32", dims=[1, 8, 8])],
        [TensorSpec(name="logits", datatype="FP32", dims=[10])],
    )
    return repo


async def test_the_embedded_backend_skips_engines_and_says_why(mixed: Path) -> None:
    backend = EmbeddedBackend()
    registry = Registry(mixed, backend)
    try:
        await registry.refresh()
        variants = registry.snapshot.families[FAMILY].variants
        assert variants["fp32"].ready
        engine = variants["trt-fp16"]
        assert not engine.ready
        assert engine.error == (
            "runtime 'tensorrt' is not served by the embedded backend, which runs onnx graphs "
            "(serve it with --backend triton)"
        )
        assert engine.ref.graph_path.name == "model.plan"
    finally:
        await registry.close()
        await backend.close()


async def test_the_triton_backend_takes_engines_without_its_fallback(mixed: Path) -> None:
    fallback = EmbeddedBackend()
    # No server listens there: the variants are servable and load when one is healthy.
    backend = TritonBackend([f"127.0.0.1:{free_port()}"], fallback=fallback, probe_interval_s=0.2)
    assert runtimes_of(backend) == {"onnx", "tensorrt"} and runtimes_of(fallback) == {"onnx"}
    registry = Registry(mixed, backend)
    try:
        await registry.refresh()
        variants = registry.snapshot.families[FAMILY].variants
        assert variants["trt-fp16"].error is None and variants["fp32"].error is None
        assert fallback.is_ready(variants["fp32"].ref)
        assert not fallback.is_ready(variants["trt-fp16"].ref)
        assert backend.is_ready(variants["fp32"].ref)  # through the fallback
        assert not backend.is_ready(variants["trt-fp16"].ref)  # only a Triton server may run it
    finally:
        await registry.close()
        await backend.close()


async def test_a_real_triton_is_asked_to_load_the_engine(
    mixed: Path, tmp_path: Path, triton_factory: Callable[..., Any]
) -> None:
    # This Triton build has no TensorRT backend: the python flavour leaves the engine out,
    # and the server's own answer is what the registry reports.
    server = triton_factory(python_flavour(mixed, tmp_path / "flavour"), explicit=True)
    backend = TritonBackend([server.grpc_url], probe_interval_s=0.5)
    registry = Registry(mixed, backend)
    try:
        await registry.refresh()
        variants = registry.snapshot.families[FAMILY].variants
        assert variants["fp32"].ready
        error = variants["trt-fp16"].error or ""
        assert f"Triton {server.grpc_url} cannot load {FAMILY}__trt-fp16" in error
    finally:
        await registry.close()
        await backend.close()
