"""Routing through the real gateway: budgets, pins, load-driven downgrades, shedding."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.wire import Wire, code_of, expected, image_input, metric

# (parameters, headers) → (variant, reason), against the fixture's declared digits profiles:
# fp32 q98 64 MiB p50 20 ms | fp16 q97.5 32 MiB 10 ms | int8 q96 16 MiB 5 ms | pruned q90 8 MiB 2 ms
BUDGETS = [
    ({}, {}, "fp32", "most-accurate"),
    ({"latency_budget_ms": 1000}, {}, "fp32", "most-accurate"),
    ({"latency_budget_ms": 15}, {}, "fp16", "latency-budget"),
    ({}, {"x-latency-budget-ms": "8"}, "int8", "latency-budget"),
    ({"latency_budget_ms": 3}, {}, "pruned-50-int8", "latency-budget"),
    ({"gpu_memory_budget_mb": 40}, {}, "fp16", "gpu-memory-budget"),
    ({}, {"x-gpu-memory-budget-mb": "10"}, "pruned-50-int8", "gpu-memory-budget"),
    ({"min_accuracy": 97.0}, {}, "fp32", "most-accurate"),
    ({"min_accuracy": 97.0, "latency_budget_ms": 15}, {}, "fp16", "latency-budget"),
    # parameter and header both given: the stricter one holds
    ({"latency_budget_ms": 500}, {"x-latency-budget-ms": "8"}, "int8", "latency-budget"),
]


@pytest.mark.parametrize(("parameters", "headers", "variant", "reason"), BUDGETS)
def test_budget_picks_the_most_accurate_variant_that_fits(
    wire, parameters, headers, variant, reason
):
    result = wire.infer(
        "digits", image_input(255), parameters=parameters or None, headers=headers or None
    )
    assert (result.variant, result.reason) == (variant, reason)
    assert result.outputs["labels"][0][0] == b"9"


def test_batch_size_counts_against_the_budget(wire):
    # At batch 8 the fp16 profile says 80 ms (p50), so a 60 ms budget needs int8 (40 ms).
    result = wire.infer("digits", image_input(*([0] * 8)), parameters={"latency_budget_ms": 60})
    assert result.variant == "int8"


def test_grpc_deadline_is_a_latency_budget(gw):
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(image_input(0)[0][2])
    # 22 ms: below fp32's profiled p95 (24 ms), and above fp16's (12 ms) by enough to leave
    # room for the time the request spends in transit on a busy machine.
    result = client.infer("digits", [tensor], client_timeout=0.022)
    client.close()
    assert result.get_response().parameters["variant"].string_param == "fp16"


@pytest.mark.parametrize("variant", ["fp32", "int8", "pruned-50-int8"])
def test_pin_is_honoured(wire, variant):
    result = wire.infer(f"digits__{variant}", image_input(0), parameters={"latency_budget_ms": 100})
    assert (result.variant, result.reason) == (variant, "pinned")


def test_impossible_budget_fails_fast(wire):
    start = time.perf_counter()
    with pytest.raises(InferenceServerException) as info:
        wire.infer("digits", image_input(0), parameters={"latency_budget_ms": 0.5})
    assert code_of(info.value, wire.protocol) == expected("FAILED_PRECONDITION", wire.protocol)
    assert "pruned-50-int8 profiled p50 2.0 ms > budget 0.5 ms" in info.value.message()
    assert time.perf_counter() - start < 1.0


def _busy_budget_ms(repo) -> float:
    from gateway.manifest import load_manifest

    fp32 = load_manifest(repo / "busy.manifest.json").variant("fp32")
    # Fits idle (its tail is 1.2x), not behind a queued run.
    return 1500 * fp32.latency_at(1, 1).p50_s


def test_load_moves_traffic_to_smaller_variants_and_back(gw, repo, wire):
    budget = {"latency_budget_ms": _busy_budget_ms(repo)}
    assert wire.infer("busy", image_input(0), parameters=budget).variant == "fp32"

    stop = threading.Event()
    served: list[tuple[str, str]] = []

    def load() -> None:
        client = grpcclient.InferenceServerClient(gw.grpc_url)
        tensor = grpcclient.InferInput("image", [1], "BYTES")
        tensor.set_data_from_numpy(image_input(0)[0][2])
        while not stop.is_set():
            params = client.infer("busy", [tensor], parameters=budget).get_response().parameters
            served.append((params["variant"].string_param, params["selection_reason"].string_param))
        client.close()

    # Six clients with the same budget on a two-thread pool: fp32 can hold two at a time,
    # the rest would queue past the budget, so they go to the small variant.
    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert ("small", "load") in served
    assert set(served) <= {("small", "load"), ("fp32", "most-accurate")}

    deadline = time.monotonic() + 1.0  # back within a second of the load ending
    while time.monotonic() < deadline:
        after = wire.infer("busy", image_input(0), parameters=budget)
        if after.variant == "fp32":
            break
        time.sleep(0.05)
    assert (after.variant, after.reason) == ("fp32", "most-accurate")


def _slow_request(protocol: str, url: str, start: threading.Barrier | None = None) -> str | int:
    lib = grpcclient if protocol == "grpc" else httpclient
    client = lib.InferenceServerClient(url)
    tensor = lib.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(image_input(0)[0][2])
    client.is_server_live()  # channels connect lazily; connect now so the requests go out together
    if start is not None:
        start.wait(30)  # every client is connected before any request goes out
    try:
        client.infer("slow__fp32", [tensor])
        return "ok"
    except InferenceServerException as exc:
        return code_of(exc, protocol)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_overload_is_shed_fast(gw, protocol):
    url = gw.grpc_url if protocol == "grpc" else gw.http_url
    before = gw.scrape()
    start = threading.Barrier(10)
    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(lambda _: _slow_request(protocol, url, start), range(10)))
    shed = expected("RESOURCE_EXHAUSTED", protocol)
    assert set(outcomes) == {"ok", shed}
    assert 1 <= outcomes.count("ok") <= 4  # max_in_flight_per_variant
    after = gw.scrape()
    shed_count = metric(after, "gateway_shed_total", model="slow", scope="variants") - metric(
        before, "gateway_shed_total", model="slow", scope="variants"
    )
    assert shed_count == outcomes.count(shed)


def _wait_for_in_flight(gw, count: int, **labels: str) -> None:
    deadline = time.monotonic() + 30
    while metric(gw.scrape(), "gateway_in_flight", **labels) < count:
        assert time.monotonic() < deadline, f"{count} requests never in flight at once"
        time.sleep(0.005)


def test_shedding_is_fast(gw):
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    tensor = grpcclient.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(image_input(0)[0][2])
    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(_slow_request, "grpc", gw.grpc_url) for _ in range(4)]
        _wait_for_in_flight(gw, model="slow", variant="fp32", count=4)
        start = time.perf_counter()
        with pytest.raises(InferenceServerException) as info:
            client.infer("slow__fp32", [tensor])
        shed_s = time.perf_counter() - start
        results = [f.result() for f in running]
    client.close()
    assert code_of(info.value, "grpc") == "RESOURCE_EXHAUSTED"
    assert "in-flight limit" in info.value.message()
    assert shed_s < 0.25
    assert results.count("ok") == 4


def test_deployment_default_budget_applies_when_none_is_stated(gateway_factory, repo):
    # The declared profiles alone decide here (a default budget applies, or it does not);
    # soft, so a loaded machine cannot drop a request unrun on int8's declared 6 ms.
    gw = gateway_factory(
        repo,
        default_latency_budget_ms=8,
        default_min_accuracy=95,
        default_latency_budget_policy="soft",
        observed_weight=0.0,
    )
    wire = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))
    assert wire.infer("digits", image_input(0)).variant == "int8"
    stated = wire.infer("digits", image_input(0), parameters={"latency_budget_ms": 1000})
    assert stated.variant == "fp32"
    with pytest.raises(InferenceServerException) as info:
        wire.infer("digits", image_input(0), parameters={"latency_budget_ms": 3})
    assert "min_accuracy 95" in info.value.message()  # the default floor still holds


def test_gateway_wide_limit_sheds(gateway_factory, repo):
    gw = gateway_factory(repo, max_in_flight=1, max_in_flight_per_variant=1)
    start = threading.Barrier(3)
    with ThreadPoolExecutor(3) as pool:
        outcomes = list(pool.map(lambda _: _slow_request("http", gw.http_url, start), range(3)))
    assert sorted(outcomes, key=str) == [429, 429, "ok"]
    samples = gw.scrape()
    assert metric(samples, "gateway_shed_total", model="slow", scope="gateway") == 2
