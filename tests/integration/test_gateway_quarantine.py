"""A variant whose session fails at run time: quarantined, routed around, back after a check.

Two families with real ONNX graphs that fail inside ONNX Runtime or the task code:

- ``fragile``: ``fp32`` reshapes by a size computed from its input, so a bright image makes
  ONNX Runtime fail the run (a dark or mid-grey one is fine); ``int8`` always works.
- ``crooked``: ``fp16`` returns logits of the wrong width for every input; ``fp32`` works.
- ``murmur`` (two graphs, Whisper's contract): ``fp32``'s encoder fails on sound and runs
  on silence, which is what a speech health check sends; ``int8`` always works.

Requests routed to a failing variant are run again on the next one, so clients see no
failure; after three failures in a row the variant is quarantined (a log line, a counter,
a gauge), routed requests avoid it and pinned ones get UNAVAILABLE. Its health check runs a
mid-grey image through it: ``fragile__fp32`` passes and serves again, ``crooked__fp16`` fails
and stays out, checked again later.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper
from tritonclient.utils import InferenceServerException

from tests.support import whisper_fixture
from tests.support.repo_fixture import (
    IMAGE_IN,
    IMAGE_OUT,
    Spec,
    _const,
    _model,
    image_assets,
    image_graph,
    write_family,
)
from tests.support.wire import Wire, image_input, metric, tone

CHECK_S = 0.5


def input_dependent_graph() -> bytes:
    """images [B,1,8,8] → logits [B,10]; fails at run time when the brightest item's mean
    pixel is above 12 (of 16): the flat tensor is then reshaped to a width it cannot have."""
    nodes = [
        helper.make_node("Reshape", ["images", "flat_shape"], ["flat"]),
        helper.make_node("ReduceMean", ["flat"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("ReduceMax", ["mean"], ["peak"], keepdims=0),
        helper.make_node("Greater", ["peak", "threshold"], ["bright"]),
        helper.make_node("Cast", ["bright"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["extra", "axis0"], ["extra1"]),
        helper.make_node("Add", ["width", "extra1"], ["new_width"]),
        helper.make_node("Concat", ["minus_one", "new_width"], ["shape"], axis=0),
        helper.make_node("Reshape", ["flat", "shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["total"], keepdims=1),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Sub", ["mean", "centre"], ["centred"]),
        helper.make_node("Mul", ["centred", "ramp"], ["base"]),
        helper.make_node("Add", ["base", "nothing"], ["logits"]),
    ]
    inits = [
        _const("flat_shape", np.array([-1, 64], np.int64)),
        _const("threshold", np.array(12.0, np.float32)),
        _const("axis0", np.array([0], np.int64)),
        _const("width", np.array([64], np.int64)),
        _const("minus_one", np.array([-1], np.int64)),
        _const("zero", np.array([[0.0]], np.float32)),
        _const("centre", np.array([[8.0]], np.float32)),
        _const("ramp", np.arange(10, dtype=np.float32)[None, :]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["B", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 10])],
        inits,
    )


def sound_sensitive_encoder() -> bytes:
    """The fixture's Whisper encoder, failing at run time on a window with sound: its mel is
    then reshaped to a width (3001) that cannot divide it."""
    nodes = [
        helper.make_node("ReduceMax", ["mel"], ["peak"], axes=[1, 2], keepdims=0),
        helper.make_node("Greater", ["peak", "threshold"], ["loud"]),
        helper.make_node("Cast", ["loud"], ["flag"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["loud"], ["loud_i"], to=TensorProto.INT64),
        helper.make_node("ReduceMax", ["loud_i"], ["extra"], axes=[0], keepdims=1),
        helper.make_node("Add", ["width", "extra"], ["new_width"]),
        helper.make_node("Concat", ["minus_one", "new_width"], ["shape"], axis=0),
        helper.make_node("Reshape", ["mel", "shape"], ["reshaped"]),
        helper.make_node("ReduceSum", ["reshaped"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["flag", "nothing"], ["kept"]),
        helper.make_node("Reshape", ["kept", "flag_shape"], ["flag5"]),
        helper.make_node("Expand", ["flag5", "expand"], ["cross_keys"]),
        helper.make_node("Identity", ["cross_keys"], ["cross_values"]),
    ]
    return _model(
        nodes,
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, ["B", 80, 3000])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", 1, 1, 2, 1])
            for n in ("cross_keys", "cross_values")
        ],
        [
            _const("threshold", np.array(0.25, np.float32)),
            _const("width", np.array([3000], np.int64)),
            _const("minus_one", np.array([-1], np.int64)),
            _const("zero", np.array(0.0, np.float32)),
            _const("flag_shape", np.array([-1, 1, 1, 1, 1], np.int64)),
            _const("expand", np.array([1, 1, 1, 2, 1], np.int64)),
        ],
    )


@pytest.fixture
def qgw(tmp_path, gateway_factory):
    repo = tmp_path / "repo"
    repo.mkdir()
    tiny = image_graph()
    write_family(
        repo,
        "fragile",
        "image-labels",
        image_assets(),
        [
            Spec("fp32", input_dependent_graph(), 99.0, 64, 0.002),
            Spec("int8", tiny, 95.0, 16, 0.001),
        ],
        IMAGE_IN,
        IMAGE_OUT,
    )
    write_family(
        repo,
        "crooked",
        "image-labels",
        image_assets(),
        [
            Spec("fp16", image_graph(num_labels=7), 99.0, 32, 0.002, precision="fp16"),
            Spec("fp32", tiny, 95.0, 64, 0.002),
        ],
        IMAGE_IN,
        IMAGE_OUT,
    )
    fragile_fp32 = {
        "encoder": sound_sensitive_encoder(),
        "decoder": whisper_fixture.decoder_graph(),
    }
    write_family(
        repo,
        "murmur",
        "audio-text",
        whisper_fixture.assets(),
        [
            Spec("fp32", fragile_fp32, 99.0, 64, 0.002),
            Spec("int8", whisper_fixture.graphs(), 95.0, 16, 0.001),
        ],
        [],
        [],
        graphs=whisper_fixture.graph_specs(),
    )
    return gateway_factory(
        repo, quarantine_check_s=CHECK_S, quarantine_max_check_s=4 * CHECK_S, observed_weight=0.0
    )


def _wait(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_failing_variant_is_quarantined_routed_around_and_restored(qgw, caplog):
    caplog.set_level(logging.WARNING, logger="gateway.variant_health")
    wire = Wire("grpc", grpcclient.InferenceServerClient(qgw.grpc_url))
    assert wire.infer("fragile", image_input(0)).variant == "fp32"

    # Bright images crash fp32; each request is run again on int8 and succeeds.
    for _ in range(3):
        result = wire.infer("fragile", image_input(255))
        assert result.variant == "int8"
        assert result.outputs["labels"][0][0] == b"9"
    samples = qgw.scrape()
    assert (
        metric(samples, "gateway_variant_quarantines_total", model="fragile", variant="fp32") == 1
    )
    assert metric(samples, "gateway_variant_quarantined", model="fragile", variant="fp32") == 1
    assert metric(samples, "gateway_retries_total", model="fragile") == 3
    lines = [r.getMessage() for r in caplog.records if "quarantined after" in r.getMessage()]
    assert len(lines) == 1 and "fragile__fp32" in lines[0] and "Reshape" in lines[0]

    # Routed around: even a dark image, which fp32 could serve, goes to int8 now.
    assert wire.infer("fragile", image_input(0)).variant == "int8"
    with pytest.raises(InferenceServerException) as info:
        wire.infer("fragile__fp32", image_input(0))
    assert "UNAVAILABLE" in str(info.value.status())
    assert "quarantined after 3 failed runs in a row" in info.value.message()

    # The health check (a mid-grey image through fp32) passes: it serves again.
    _wait(lambda: wire.infer("fragile", image_input(0)).variant == "fp32")
    samples = qgw.scrape()
    assert (
        metric(
            samples,
            "gateway_variant_health_checks_total",
            model="fragile",
            variant="fp32",
            outcome="passed",
        )
        == 1
    )
    assert metric(samples, "gateway_variant_quarantined", model="fragile", variant="fp32") == 0
    assert any("passed its health check" in r.getMessage() for r in caplog.records)


def test_a_two_graph_variant_is_checked_through_both_of_its_graphs(qgw):
    wire = Wire("grpc", grpcclient.InferenceServerClient(qgw.grpc_url))
    silence, sound = np.zeros((1, 8000), np.float32), tone(seconds=1.0)[None, :]
    assert wire.infer("murmur", [("audio", "FP32", silence)]).variant == "fp32"
    for _ in range(3):  # fp32's encoder fails on sound; each request runs again on int8
        result = wire.infer("murmur", [("audio", "FP32", sound)])
        assert result.variant == "int8" and result.outputs["text"][0] == b"a"
    assert metric(qgw.scrape(), "gateway_variant_quarantined", model="murmur", variant="fp32") == 1
    # The health check runs the canned silence through the encoder and then the decoder.
    _wait(lambda: wire.infer("murmur", [("audio", "FP32", silence)]).variant == "fp32")
    samples = qgw.scrape()
    checks = {"model": "murmur", "variant": "fp32"}
    assert metric(samples, "gateway_variant_health_checks_total", outcome="passed", **checks) == 1
    assert metric(samples, "gateway_variant_quarantined", **checks) == 0


def test_a_variant_failing_its_health_check_stays_out(qgw):
    wire = Wire("grpc", grpcclient.InferenceServerClient(qgw.grpc_url))
    for _ in range(3):
        assert wire.infer("crooked", image_input(0)).variant == "fp32"  # fp16 failed, retried
    _wait(
        lambda: (
            metric(
                qgw.scrape(),
                "gateway_variant_health_checks_total",
                model="crooked",
                variant="fp16",
                outcome="failed",
            )
            >= 2
        )
    )
    samples = qgw.scrape()
    assert metric(samples, "gateway_variant_quarantined", model="crooked", variant="fp16") == 1
    assert (
        metric(samples, "gateway_variant_quarantines_total", model="crooked", variant="fp16") == 1
    )
    assert wire.infer("crooked", image_input(0)).variant == "fp32"
    assert metric(samples, "gateway_retries_total", model="crooked") == 3


def test_a_pinned_request_to_a_failing_variant_fails_alone(qgw):
    wire = Wire("grpc", grpcclient.InferenceServerClient(qgw.grpc_url))
    with pytest.raises(InferenceServerException) as info:
        wire.infer("fragile__fp32", image_input(255))
    assert "INTERNAL" in str(info.value.status())  # pinned: no other variant may answer
    assert (
        wire.infer("fragile", image_input(0)).variant == "fp32"
    )  # one failure quarantines nothing
