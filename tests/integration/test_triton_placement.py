"""Variants loaded and unloaded on the real Triton by demand, within a GPU-memory budget.

The fixture's ``digits`` variants declare 64 (fp32), 32 (fp16), 16 (int8) and 8 MiB
(pruned-50-int8); the Triton server may hold 70 MiB, so fp32 and int8 never fit together.
Three phases of concurrent traffic move the demand: unbounded requests (fp32), requests
with a 20 MiB budget (int8), unbounded again (back to fp32). Meanwhile a monitor reads
Triton's own repository index and sums what Triton holds. Every request must succeed.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.manifest import load_manifest
from tests.support.triton import python_flavour, subset
from tests.support.wire import metric, objects, png

MIB = 1 << 20
BUDGET_MB = 70
CLIENTS = 3


@dataclass
class Outcome:
    variant: str = ""
    reason: str = ""
    error: str = ""
    latency_s: float = 0.0


@dataclass
class Monitor:
    """Polls Triton's repository index; records the most memory it ever held."""

    url: str
    sizes: dict[str, int]
    peak_bytes: int = 0
    peak_models: set[str] = field(default_factory=set)
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            while not self._stop.is_set():
                index = client.get_model_repository_index(client_timeout=10)
                held = {
                    m.name for m in index.models if m.state in ("READY", "LOADING", "UNLOADING")
                }
                held_bytes = sum(self.sizes[name] for name in held)
                if held_bytes > self.peak_bytes:
                    self.peak_bytes, self.peak_models = held_bytes, held
                self.polls += 1
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()


def request(client: grpcclient.InferenceServerClient, budget_mb: float | None) -> Outcome:
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(objects(png(200)))
    parameters = {} if budget_mb is None else {"gpu_memory_budget_mb": budget_mb}
    start = time.monotonic()
    try:
        result = client.infer("digits", [tensor], parameters=parameters, client_timeout=60)
    except InferenceServerException as exc:
        return Outcome(error=f"{exc.status()}: {exc.message()}")
    params = result.get_response().parameters
    assert result.as_numpy("labels")[0][0] == b"9"
    return Outcome(
        params["variant"].string_param,
        params["selection_reason"].string_param,
        latency_s=time.monotonic() - start,
    )


def phase(url: str, budget_mb: float | None, per_client: int) -> list[list[Outcome]]:
    """``CLIENTS`` clients sending ``per_client`` requests each, one at a time."""

    def client_loop() -> list[Outcome]:
        client = grpcclient.InferenceServerClient(url)
        try:
            return [request(client, budget_mb) for _ in range(per_client)]
        finally:
            client.close()

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(client_loop) for _ in range(CLIENTS)]
        return [f.result(timeout=300) for f in futures]


@pytest.fixture
def placed(
    repo: Path,
    tmp_path: Path,
    triton_factory: Callable[..., Any],
    gateway_factory: Callable[..., Any],
) -> Iterator[tuple[Any, Any, Monitor]]:
    models = subset(repo, tmp_path / "repo", ("digits",))
    triton = triton_factory(python_flavour(models, tmp_path / "flavour"), explicit=True)
    manifest = load_manifest(models / "digits.manifest.json")
    sizes = {v.model_name: v.gpu_memory_bytes for v in manifest.variants}
    gateway = gateway_factory(
        models,
        backend="triton",
        triton_urls=[triton.grpc_url],
        triton_metrics_urls=[f"http://127.0.0.1:{triton.metrics_port}/metrics"],
        triton_gpu_memory_budget_mb=BUDGET_MB,
        triton_demand_window_s=3.0,
        triton_probe_interval_s=0.5,
        observed_weight=0.0,
        request_timeout_s=30,
        max_in_flight_per_variant=8,
    )
    monitor = Monitor(triton.grpc_url, sizes)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    try:
        yield triton, gateway, monitor
    finally:
        monitor.stop()
        thread.join(30)


def test_variants_follow_demand_within_the_budget(
    placed: tuple[Any, Any, Monitor], caplog: pytest.LogCaptureFixture
) -> None:
    triton, gateway, monitor = placed
    caplog.set_level(logging.INFO, logger="gateway.backends.triton")
    url = gateway.grpc_url
    # Nothing is loaded until requests ask: the first ones wait for fp32 to load.
    phases = [phase(url, None, 8), phase(url, 20, 8), phase(url, None, 30)]
    first, second, third = ([o for c in p for o in c] for p in phases)

    assert [o.error for o in first + second + third if o.error] == []
    assert {o.variant for o in first} == {"fp32"}
    assert {o.variant for o in second} == {"int8"}
    # Back to unbounded requests: int8 serves ("loading") until fp32 has replaced it, then
    # fp32 serves every client to the end.
    assert any(o.reason == "loading" for o in third)
    assert {o.reason for o in third if o.variant == "int8"} == {"loading"}
    for client in phases[2]:
        variants = [o.variant for o in client]
        switch = variants.index("fp32")
        assert set(variants[:switch]) <= {"int8"} and set(variants[switch:]) == {"fp32"}
    # Triton never held more than the budget, by its own index.
    assert monitor.polls > 10
    assert 0 < monitor.peak_bytes <= BUDGET_MB * MIB, monitor.peak_models

    samples = gateway.scrape()
    server = triton.grpc_url

    def count(name: str, variant: str, **labels: str) -> float:
        return metric(samples, name, server=server, model="digits", variant=variant, **labels)

    loads_fp32 = sum(
        count("gateway_triton_loads_total", "fp32", reason=r, outcome="ok")
        for r in ("urgent", "demand")
    )
    assert loads_fp32 == 2
    assert count("gateway_triton_loads_total", "int8", reason="urgent", outcome="ok") == 1
    assert count("gateway_triton_unloads_total", "fp32", reason="evicted") == 1
    assert count("gateway_triton_unloads_total", "int8", reason="evicted") == 1
    assert metric(samples, "gateway_triton_resident_bytes", server=server) == 64 * MIB
    assert count("gateway_triton_variant_resident", "fp32") == 1
    assert count("gateway_triton_variant_resident", "int8") == 0
    loading = metric(
        samples, "gateway_selections_total", model="digits", variant="int8", reason="loading"
    )
    assert loading == sum(1 for o in third if o.reason == "loading")
    # The decisions are logged with their reasons.
    messages = [r.getMessage() for r in caplog.records]
    assert any("load digits__int8 (urgent" in m and "evicting digits__fp32" in m for m in messages)
    assert any("load digits__fp32" in m and "evicting digits__int8" in m for m in messages)
