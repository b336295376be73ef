"""Metrics asserted by scraping /metrics after real calls."""

from __future__ import annotations

import pytest
from tritonclient.utils import InferenceServerException

from tests.support.wire import image_input, metric


def delta(before, after, name, **labels):
    return metric(after, name, **labels) - metric(before, name, **labels)


def test_request_outcomes_latency_and_choices(gw, wire):
    before = gw.scrape()
    wire.infer("digits", image_input(0))
    # fp32 and fp16 are profiled slower than 8 ms, so a smaller variant serves: int8, or
    # pruned-50-int8 when the request took long enough to reach routing on a busy machine
    # that int8's tail no longer fits. The metrics must say what the response says.
    budgeted = wire.infer("digits", image_input(0), parameters={"latency_budget_ms": 8})
    assert (budgeted.variant, budgeted.reason) in {
        ("int8", "latency-budget"),
        ("pruned-50-int8", "load"),
    }
    with pytest.raises(InferenceServerException):
        wire.infer("digits", image_input(0), parameters={"latency_budget_ms": 0.1})
    with pytest.raises(InferenceServerException):
        wire.infer("nope", image_input(0))
    after = gw.scrape()

    assert (
        delta(before, after, "gateway_requests_total", model="digits", variant="fp32", code="OK")
        == 1
    )
    assert (
        delta(
            before,
            after,
            "gateway_requests_total",
            model="digits",
            variant=budgeted.variant,
            code="OK",
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "gateway_requests_total",
            model="digits",
            variant="",
            code="FAILED_PRECONDITION",
        )
        == 1
    )
    assert (
        delta(
            before, after, "gateway_requests_total", model="_unknown", variant="", code="NOT_FOUND"
        )
        == 1
    )
    assert (
        delta(
            before,
            after,
            "gateway_selections_total",
            model="digits",
            variant=budgeted.variant,
            reason=budgeted.reason,
        )
        == 1
    )
    count = delta(
        before,
        after,
        "gateway_request_seconds_count",
        model="digits",
        variant="fp32",
        protocol=wire.protocol,
    )
    assert count == 1
    assert (
        delta(
            before, after, "gateway_backend_seconds_count", model="digits", variant=budgeted.variant
        )
        == 1
    )
    assert delta(before, after, "gateway_budget_requests_total", model="digits") == 1


def test_budget_miss_is_counted(gw, wire):
    # slow's profile claims 1 ms, so a 20 ms budget admits it and the graph misses it.
    before = gw.scrape()
    wire.infer("slow", image_input(0), parameters={"latency_budget_ms": 20})
    after = gw.scrape()
    assert delta(before, after, "gateway_budget_misses_total", model="slow", variant="fp32") == 1


def test_static_variant_gauges(gw):
    samples = gw.scrape()
    assert metric(samples, "gateway_variant_quality", model="digits", variant="int8") == 96.0
    assert (
        metric(samples, "gateway_variant_gpu_memory_bytes", model="digits", variant="fp16")
        == 32 * 2**20
    )
    assert metric(
        samples, "gateway_variant_profiled_p95_seconds", model="digits", variant="fp32"
    ) == pytest.approx(0.024)
    assert metric(samples, "gateway_variant_size_bytes", model="digits", variant="fp32") > 0
    assert metric(samples, "gateway_variant_parameters", model="digits", variant="fp32") > 0
    assert metric(samples, "gateway_variant_ready", model="flaky", variant="int8") == 0
    assert metric(samples, "gateway_variant_ready", model="flaky", variant="fp32") == 1
    assert ("gateway_queue_depth", frozenset({("model", "digits"), ("variant", "fp32")})) in samples
    assert metric(samples, "gateway_in_flight", model="digits", variant="fp32") == 0
    assert metric(samples, "gateway_registry_reloads_total", outcome="failed") >= 1
