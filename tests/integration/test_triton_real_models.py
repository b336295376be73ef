"""The real zoo models behind the real Triton answer exactly as the embedded backend.

Uses the session's quick repository (built from the committed zoo checkpoints). Triton runs
with a GPU-memory budget large enough for two variants per family, so only what requests
ask for is loaded: the routed (most accurate) variant and a pinned int8 one.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from builders.zoo.speech import data as speech_data
from builders.zoo.translation.corpus import read_split
from gateway.manifest import find_manifests, load_manifest
from tests.support.triton import python_flavour
from tests.support.wire import PROTOCOLS, Wire, objects, png, wav

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ZOO = ROOT / "builders" / "zoo"
FAMILIES = ("digits", "vision", "speech", "translation")


def jpeg(path: Path, size: int = 160) -> bytes:
    image = Image.open(path).convert("RGB")
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def task_inputs(task: str) -> list[tuple[str, str, np.ndarray]]:
    """Two items of a task's wire input, from committed data where there is some."""
    if task == "image-labels":
        photos = sorted((ZOO / "vision" / "data").rglob("*.jpg"))[:1]
        items = [png(40, size=32), *(jpeg(p) for p in photos)] or [png(200, size=32)]
        return [("image", "BYTES", objects(*items))]
    if task == "audio-text":
        recordings = speech_data.real_recordings()[5:7]
        return [("audio", "BYTES", objects(*(wav(u.waveform) for u in recordings)))]
    texts = [pair.en for pair in read_split("heldout")[:2]]
    return [("text", "BYTES", objects(*(t.encode() for t in texts)))]


@pytest.fixture(scope="module")
def real_stack(
    quick_repository: Path,
    tmp_path_factory: pytest.TempPathFactory,
    module_triton_factory: Callable[..., Any],
    module_gateway_factory: Callable[..., Any],
) -> Iterator[dict[str, Any]]:
    manifests = {m.family: m for m in map(load_manifest, find_manifests(quick_repository))}
    # Room for the two largest published variants of every family.
    budget_bytes = sum(
        sum(sorted(v.gpu_memory_bytes for v in m.published())[-2:]) for m in manifests.values()
    )
    flavour = python_flavour(quick_repository, tmp_path_factory.mktemp("real") / "flavour")
    triton = module_triton_factory(flavour, explicit=True)
    settings: dict[str, Any] = {"request_timeout_s": 120, "task_threads": 2}
    on_triton = module_gateway_factory(
        quick_repository,
        backend="triton",
        triton_urls=[triton.grpc_url],
        triton_gpu_memory_budget_mb=budget_bytes / (1 << 20) + 1,
        **settings,
    )
    embedded = module_gateway_factory(quick_repository, **settings)
    clients: dict[str, dict[str, Any]] = {}
    for name, gw in (("triton", on_triton), ("embedded", embedded)):
        clients[name] = {
            "grpc": grpcclient.InferenceServerClient(gw.grpc_url),
            "http": httpclient.InferenceServerClient(gw.http_url, network_timeout=300),
        }
    yield {"manifests": manifests, "clients": clients}
    for pair in clients.values():
        for client in pair.values():
            client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("family", FAMILIES)
def test_real_models_answer_as_embedded(
    real_stack: dict[str, Any], family: str, protocol: str
) -> None:
    manifest = real_stack["manifests"].get(family)
    if manifest is None:
        pytest.skip(f"the zoo has no committed {family} checkpoint to build from")
    inputs = task_inputs(manifest.task)
    pinned = [v.model_name for v in manifest.published() if v.name.endswith("int8")][:1]
    clients = real_stack["clients"]
    routed = Wire(protocol, clients["triton"][protocol]).infer(family, inputs)
    assert routed.parameters["served_model"].startswith(f"{family}__")
    for model in [family, *pinned]:
        want = Wire(protocol, clients["embedded"][protocol]).infer(model, inputs)
        # Variants of equal quality may be routed differently by the two gateways (live
        # latency breaks ties), so Triton is asked for the variant the embedded one used.
        served = want.parameters["served_model"]
        got = Wire(protocol, clients["triton"][protocol]).infer(served, inputs)
        assert set(got.outputs) == set(want.outputs)
        for name, array in want.outputs.items():
            np.testing.assert_array_equal(got.outputs[name], array, err_msg=f"{model} {name}")
