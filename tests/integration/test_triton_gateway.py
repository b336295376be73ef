"""The gateway in front of the real Triton server answers exactly as the embedded backend.

One Triton (the ``tritonserver`` 2.51 of nvidia-pytriton, python backend, explicit model
control) serves the python-backend flavour of the fixture repository; one gateway runs on
it and one on the embedded backend, with the same settings and the same repository. Every
task, routed and pinned, over gRPC and HTTP: same variant, same outputs, same errors.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.support.triton import python_flavour, subset
from tests.support.wire import (
    PROTOCOLS,
    Wire,
    code_of,
    expected,
    image_input,
    metric,
    objects,
    tone,
    wav,
)

FAMILIES = ("digits", "speech", "translation", "slow", "flaky")
SETTINGS: dict[str, Any] = {
    "observed_weight": 0.0,  # route on the declared profiles only, as the fixture expects
    "max_in_flight_per_variant": 4,
    "task_threads": 4,
    "request_timeout_s": 60,
}
QUEUED_RUNS = 12
"""Direct requests to the slow model (about 0.1 s each): a queue lasting several polls."""
TEXTS = ["hello world", "the cat sat on the mat"]
CASES: dict[str, tuple[str, list[tuple[str, str, np.ndarray]]]] = {
    "digits-routed": ("digits", image_input(0, 90, 200, 255)),
    "digits-pinned": ("digits__pruned-50-int8", image_input(30, 220)),
    "speech-routed": ("speech", [("audio", "FP32", np.stack([tone(0.5), np.zeros(8000, "f4")]))]),
    "speech-pinned-wav": ("speech__int8", [("audio", "BYTES", objects(wav(tone(0.3, 220.0))))]),
    "translation-routed": (
        "translation",
        [("text", "BYTES", objects(*(t.encode() for t in TEXTS)))],
    ),
    "translation-pinned": ("translation__int8", [("text", "BYTES", objects(b"good morning"))]),
}


def triton_metric(server: Any, name: str, model: str) -> float:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}",'):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def stack(
    repo: Path,
    tmp_path_factory: pytest.TempPathFactory,
    module_triton_factory: Callable[..., Any],
    module_gateway_factory: Callable[..., Any],
) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("triton-parity")
    models = subset(repo, work / "repo", FAMILIES)
    triton = module_triton_factory(python_flavour(models, work / "flavour"), explicit=True)
    on_triton = module_gateway_factory(
        models,
        backend="triton",
        triton_urls=[triton.grpc_url],
        triton_metrics_urls=[f"http://127.0.0.1:{triton.metrics_port}/metrics"],
        triton_probe_interval_s=0.5,
        **SETTINGS,
    )
    embedded = module_gateway_factory(models, **SETTINGS)
    clients = {
        "triton": {
            "grpc": grpcclient.InferenceServerClient(on_triton.grpc_url),
            "http": httpclient.InferenceServerClient(on_triton.http_url, network_timeout=120),
        },
        "embedded": {
            "grpc": grpcclient.InferenceServerClient(embedded.grpc_url),
            "http": httpclient.InferenceServerClient(embedded.http_url, network_timeout=120),
        },
    }
    yield {"triton": triton, "gateway": on_triton, "embedded": embedded, "clients": clients}
    for pair in clients.values():
        for client in pair.values():
            client.close()


def wires(stack: dict[str, Any], protocol: str) -> tuple[Wire, Wire]:
    clients = stack["clients"]
    return Wire(protocol, clients["triton"][protocol]), Wire(
        protocol, clients["embedded"][protocol]
    )


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("case", list(CASES))
def test_answers_match_the_embedded_backend(
    stack: dict[str, Any], protocol: str, case: str
) -> None:
    model, inputs = CASES[case]
    on_triton, embedded = wires(stack, protocol)
    family = model.split("__")[0]
    before = stack["gateway"].scrape()
    got = on_triton.infer(model, inputs)
    want = embedded.infer(model, inputs)
    assert got.variant == want.variant and got.reason == want.reason
    assert set(got.outputs) == set(want.outputs)
    for name, array in want.outputs.items():
        assert got.outputs[name].dtype == array.dtype, name
        np.testing.assert_array_equal(got.outputs[name], array, err_msg=name)
    # It really ran on Triton: the gateway counted runs there.
    after = stack["gateway"].scrape()
    labels = {"server": stack["triton"].grpc_url, "model": family, "variant": got.variant}
    ran = metric(after, "gateway_triton_runs_total", outcome="ok", **labels)
    assert ran > metric(before, "gateway_triton_runs_total", outcome="ok", **labels)


def test_triton_counted_the_runs(stack: dict[str, Any]) -> None:
    on_triton, _ = wires(stack, "grpc")
    before = triton_metric(stack["triton"], "nv_inference_request_success", "digits__fp32")
    on_triton.infer("digits__fp32", image_input(10, 20))
    after = triton_metric(stack["triton"], "nv_inference_request_success", "digits__fp32")
    assert after == before + 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("model", "code"),
    [
        # A graph Triton cannot load is unavailable, as in the embedded backend.
        ("flaky__int8", "UNAVAILABLE"),
        # Logits of the wrong width fail in the task code: internal on both.
        ("flaky__fp16", "INTERNAL"),
        ("digits__pruned-75", "NOT_FOUND"),
    ],
)
def test_errors_match_the_embedded_backend(
    stack: dict[str, Any], protocol: str, model: str, code: str
) -> None:
    for wire in wires(stack, protocol):
        with pytest.raises(InferenceServerException) as info:
            wire.infer(model, image_input(0))
        assert code_of(info.value, protocol) == expected(code, protocol)


class SlowQueue:
    """Direct requests keeping Triton's one-instance slow model busy for a while."""

    def __init__(self, triton: Any, runs: int = QUEUED_RUNS) -> None:
        self.client = grpcclient.InferenceServerClient(triton.grpc_url)
        self.runs = runs
        self.errors: list[Any] = []

    def __enter__(self) -> SlowQueue:
        tensor = grpcclient.InferInput("images", [1, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1, 8, 8), np.float32))
        for _ in range(self.runs):
            self.client.async_infer(
                "slow__fp32", [tensor], lambda result, error: self.errors.append(error)
            )
        return self

    def done(self) -> bool:
        return len(self.errors) == self.runs

    def __exit__(self, *exc_info: object) -> None:
        deadline = time.monotonic() + 120
        while not self.done() and time.monotonic() < deadline:
            time.sleep(0.05)
        self.client.close()
        assert self.errors == [None] * self.runs


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_deadline_is_carried_to_triton(stack: dict[str, Any], protocol: str) -> None:
    on_triton, _ = wires(stack, protocol)
    with SlowQueue(stack["triton"]) as queue:
        start = time.monotonic()
        with pytest.raises(InferenceServerException) as info:
            # Queued behind a second or more of work at Triton: past the 200 ms deadline.
            on_triton.infer("slow", image_input(0), timeout_us=200_000)
        elapsed_s = time.monotonic() - start
        assert not queue.done()
    assert code_of(info.value, protocol) == expected("DEADLINE_EXCEEDED", protocol)
    assert elapsed_s < 0.8


def test_health_and_placement_metrics(stack: dict[str, Any]) -> None:
    samples = stack["gateway"].scrape()
    url = stack["triton"].grpc_url
    assert metric(samples, "gateway_triton_server_healthy", server=url) == 1
    loads = metric(
        samples,
        "gateway_triton_loads_total",
        server=url,
        model="digits",
        variant="fp32",
        reason="startup",
        outcome="ok",
    )
    assert loads == 1
    failed = metric(
        samples,
        "gateway_triton_loads_total",
        server=url,
        model="flaky",
        variant="int8",
        reason="startup",
        outcome="failed",
    )
    assert failed == 1
    assert (
        metric(
            samples, "gateway_triton_variant_resident", server=url, model="speech", variant="int8"
        )
        == 1
    )


def test_triton_queue_reaches_the_selector(stack: dict[str, Any]) -> None:
    """Work queued at Triton by another client shows in the queue depth the selector reads."""
    triton, gateway = stack["triton"], stack["gateway"]
    depth = {"model": "slow", "variant": "fp32"}
    # Quiet first (an earlier test queued work here): the signal fades once the queue has.
    deadline = time.monotonic() + 20
    while metric(gateway.scrape(), "gateway_queue_depth", **depth) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    with SlowQueue(triton) as queue:
        deadline = time.monotonic() + 20
        seen = 0.0
        while not seen and time.monotonic() < deadline and not queue.done():
            seen = metric(gateway.scrape(), "gateway_queue_depth", **depth)
            time.sleep(0.05)
        assert seen >= 1
    # The next poll reports how long those requests queued.
    deadline = time.monotonic() + 30
    queued = 0.0
    while not queued and time.monotonic() < deadline:
        samples = gateway.scrape()
        queued = metric(samples, "gateway_triton_queue_seconds", server=triton.grpc_url, **depth)
        time.sleep(0.1)
    assert queued > 0


def test_gateway_serve_command_on_triton(stack: dict[str, Any]) -> None:
    """``gateway serve --backend triton --triton-url ...`` as a real process."""
    triton = stack["triton"]
    models = stack["gateway"].settings.repository
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(models)]
    command += ["--http-port", "0", "--grpc-port", "0", "--log-level", "warning"]
    command += ["--backend", "triton", "--triton-url", triton.grpc_url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        ports = json.loads(proc.stdout.readline())
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc_port']}")
        try:
            result = Wire("grpc", client).infer("digits__int8", image_input(255))
        finally:
            client.close()
        assert result.outputs["labels"][0][0] == b"9"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
