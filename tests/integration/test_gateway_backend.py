"""The embedded ONNX Runtime backend on real graphs: batching, queues, deadlines, loading."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from gateway.backends.base import ModelRef
from gateway.backends.embedded import EmbeddedBackend
from gateway.errors import BackendTimeoutError, VariantUnavailableError
from tests.support.repo_fixture import image_graph, speech_graph


def _ref(tmp_path, graph: bytes, name: str = "t__fp32", max_batch_size: int = 8) -> ModelRef:
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(graph)
    return ModelRef(name, path, "", max_batch_size)


def _images(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    return {"images": np.full((rows, 1, 8, 8), value, np.float32)}


async def test_concurrent_runs_are_batched_and_split(tmp_path):
    graph = image_graph()
    ref = _ref(tmp_path, graph)
    batches: list[int] = []
    backend = EmbeddedBackend(variant_concurrency=1, on_batch=lambda r, rows: batches.append(rows))
    await backend.load(ref)
    try:
        inputs = [_images(v, rows=1 + v % 2) for v in range(6)]
        outputs = await asyncio.gather(*(backend.run(ref, x) for x in inputs))
    finally:
        await backend.close()
    session = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    for x, out in zip(inputs, outputs, strict=True):
        np.testing.assert_allclose(out["logits"], session.run(None, x)[0], rtol=1e-6)
    # 9 rows in runs of 1,2,1,2,1,2: the first batch takes what fits under 8 rows (7), in order.
    assert batches == [7, 2]


async def test_different_shapes_are_not_batched(tmp_path):
    ref = _ref(tmp_path, speech_graph())
    batches: list[int] = []
    backend = EmbeddedBackend(variant_concurrency=1, on_batch=lambda r, rows: batches.append(rows))
    await backend.load(ref)
    try:
        short = {"features": np.zeros((1, 10, 80), np.float32)}
        long = {"features": np.zeros((1, 30, 80), np.float32)}
        out = await asyncio.gather(
            backend.run(ref, short), backend.run(ref, long), backend.run(ref, short)
        )
    finally:
        await backend.close()
    assert [o["log_probs"].shape[1] for o in out] == [5, 15, 5]
    assert sorted(batches) == [1, 2]


async def test_unbatched_graph_runs_one_by_one(tmp_path):
    ref = _ref(tmp_path, image_graph(), max_batch_size=0)
    batches: list[int] = []
    backend = EmbeddedBackend(variant_concurrency=1, on_batch=lambda r, rows: batches.append(rows))
    await backend.load(ref)
    try:
        await asyncio.gather(*(backend.run(ref, _images(v)) for v in range(3)))
    finally:
        await backend.close()
    assert batches == [1, 1, 1]


async def test_full_queue_refuses_at_once(tmp_path):
    ref = _ref(tmp_path, image_graph(heavy_rows=64, heavy_layers=4), max_batch_size=0)
    backend = EmbeddedBackend(variant_concurrency=1, max_queue=2)
    await backend.load(ref)
    try:
        results = await asyncio.gather(
            *(backend.run(ref, _images(v)) for v in range(4)), return_exceptions=True
        )
    finally:
        await backend.close()
    assert [type(r).__name__ for r in results] == [
        "dict",
        "dict",
        "CapacityExhaustedError",
        "CapacityExhaustedError",
    ]
    assert "queue full" in str(results[2])


async def test_deadline_and_dropped_runs(tmp_path):
    ref = _ref(tmp_path, image_graph(heavy_rows=256, heavy_layers=20), max_batch_size=0)
    batches: list[int] = []
    backend = EmbeddedBackend(variant_concurrency=1, on_batch=lambda r, rows: batches.append(rows))
    await backend.load(ref)
    try:
        first = asyncio.ensure_future(backend.run(ref, _images(0)))
        await asyncio.sleep(0.01)  # the worker has taken the first run
        with pytest.raises(BackendTimeoutError):
            await backend.run(ref, _images(1), timeout_s=0.01)
        await first
        await asyncio.sleep(0.05)
    finally:
        await backend.close()
    assert batches == [1]  # the expired run never reached the session


async def test_load_failures_and_unload(tmp_path):
    backend = EmbeddedBackend()
    bad = _ref(tmp_path, b"not a graph", name="bad__int8")
    with pytest.raises(VariantUnavailableError, match="bad__int8: cannot load"):
        await backend.load(bad)
    good = _ref(tmp_path, image_graph())
    await backend.load(good)
    assert backend.is_ready(good) and not backend.is_ready(bad)
    await backend.unload(good)
    with pytest.raises(VariantUnavailableError, match="not loaded"):
        await backend.run(good, _images(0))
    await backend.close()
