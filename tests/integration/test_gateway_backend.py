"""The embedded ONNX Runtime backend on real graphs: leases, runners, loading, unloading."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import onnxruntime as ort
import pytest

from gateway.backends.base import ModelRef
from gateway.backends.embedded import EmbeddedBackend
from gateway.errors import BackendTimeoutError, VariantUnavailableError
from tests.support.repo_fixture import image_graph


def _ref(tmp_path, graph: bytes, name: str = "t__fp32", max_batch_size: int = 8) -> ModelRef:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(graph)
    return ModelRef(name, path, "", max_batch_size)


def _images(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"images": np.full((rows, 1, 8, 8), value, np.float32)}


async def test_runner_runs_the_session_in_the_calling_thread(tmp_path):
    graph = image_graph()
    ref = _ref(tmp_path, graph)
    rows: list[int] = []
    backend = EmbeddedBackend(on_batch=lambda r, n: rows.append(n))
    await backend.load(ref)
    lease = await backend.acquire([ref], 1.0)
    runner = backend.graph_runner(lease, asyncio.get_running_loop())
    threads: list[str] = []

    def call() -> dict:
        threads.append(threading.current_thread().name)
        return dict(runner(_images(3, rows=2), 10.0))

    out = await asyncio.to_thread(call)
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(out["logits"], session.run(None, _images(3, rows=2))[0], rtol=1e-6)
    assert threads and threads[0] != threading.main_thread().name
    assert rows == [2]
    with pytest.raises(BackendTimeoutError):
        runner(_images(0), 0.0)  # a deadline already passed never reaches the session
    assert rows == [2]
    await backend.close()


async def test_a_lease_is_the_first_loaded_ref(tmp_path):
    backend = EmbeddedBackend()
    a, b = _ref(tmp_path, image_graph(), "a__fp32"), _ref(tmp_path, image_graph(), "b__fp32")
    await backend.load(b)
    lease = await backend.acquire([a, b], 1.0)
    assert (lease.ref, lease.holder) == (b, "")
    with pytest.raises(VariantUnavailableError, match="a__fp32 not loaded"):
        await backend.acquire([a], 1.0)
    await backend.close()


async def test_load_failures_and_unload(tmp_path):
    backend = EmbeddedBackend()
    bad = _ref(tmp_path, b"not a graph", name="bad__int8")
    with pytest.raises(VariantUnavailableError, match="bad__int8: cannot load"):
        await backend.load(bad)
    good = _ref(tmp_path, image_graph())
    await backend.load(good)
    assert backend.is_ready(good) and not backend.is_ready(bad)
    runner = backend.graph_runner(await backend.acquire([good], 1.0), asyncio.get_running_loop())
    await backend.unload(good)
    # A request that holds the variant finishes on it; new ones cannot lease it.
    assert runner(_images(0), 10.0)["logits"].shape == (1, 10)
    with pytest.raises(VariantUnavailableError, match="not loaded"):
        await backend.run(good, _images(0))
    await backend.close()


async def test_run_from_the_loop_for_a_fallback(tmp_path):
    ref = _ref(tmp_path, image_graph())
    backend = EmbeddedBackend()
    await backend.load(ref)
    out = await backend.run(ref, _images(16), timeout_s=10)
    assert out["logits"].shape == (1, 10)
    await backend.close()
