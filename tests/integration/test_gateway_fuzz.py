"""Fuzzing a real gateway process: gRPC and HTTP requests (hypothesis) and its own
``/openapi.json`` (schemathesis), with its memory and open files measured around the run.

The gateway runs as ``gateway serve`` in its own process, so what is measured is the server
alone. Every answer must be a success or a client error with a message (gRPC: a 4xx-class
status; HTTP: 4xx with ``{"error": ...}``); every call has a 10 s client deadline, so a hang
fails the run. After a warm-up the resident memory and the open file descriptors are read
from ``/proc``; after the fuzz they must be back near those figures. Bounded: a fixed
number of examples per kind (``WIRE_FUZZ_EXAMPLES``, 200), about a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.fuzzing import HEADERS, MODEL_NAMES, grpc_requests, http_bodies, task_requests
from tests.support.gateway import GatewayProcess, serve_process

EXAMPLES = int(os.environ.get("WIRE_FUZZ_EXAMPLES", "200"))
TIMEOUT_S = 10.0
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
"""gRPC statuses that mean "your request" (4xx-class), as the error table maps them."""
DEADLINE_WORDS = {"timeout", "latency_budget_ms", "x-latency-budget-ms"}
"""Parameters and headers that give a request a deadline: dropped unrun is then an answer."""
RSS_SLACK_BYTES = 48 * 1024 * 1024
FD_SLACK = 4
GATEWAY_ENV = {
    "GATEWAY_MAX_ITEMS_PER_REQUEST": "16",
    "GATEWAY_MAX_TENSOR_ELEMENTS": "200000",
    "GATEWAY_MAX_PAYLOAD_BYTES": str(4 * 1024 * 1024),
    "GATEWAY_REQUEST_TIMEOUT_S": "8",
}


@pytest.fixture(scope="module")
def served(repo) -> Iterator[GatewayProcess]:
    with serve_process(repo, GATEWAY_ENV) as process:
        yield process


@dataclass
class Tally:
    """What the fuzz saw, per kind of case."""

    cases: dict[str, int] = field(default_factory=dict)
    answers: dict[str, dict[str, int]] = field(default_factory=dict)
    slowest_s: float = 0.0

    def record(self, kind: str, answer: str, elapsed_s: float) -> None:
        self.cases[kind] = self.cases.get(kind, 0) + 1
        by_answer = self.answers.setdefault(kind, {})
        by_answer[answer] = by_answer.get(answer, 0) + 1
        self.slowest_s = max(self.slowest_s, elapsed_s)


def _ascii(headers: dict[str, str]) -> list[tuple[str, str]]:
    """Headers / metadata a client library can send at all (printable ASCII values)."""
    return [(k, v) for k, v in headers.items() if v.isascii() and v.isprintable()]


def _grpc_answer(call: Any, *, deadline_asked: bool) -> str:
    try:
        call()
    except grpc.RpcError as exc:
        code = exc.code()
        allowed = CLIENT_ERRORS | ({grpc.StatusCode.DEADLINE_EXCEEDED} if deadline_asked else set())
        assert code in allowed, f"{code}: {exc.details()}"
        assert exc.details(), f"{code} without a message"
        return str(code.name)
    return "OK"


def _http_answer(response: httpx.Response, *, deadline_asked: bool = False) -> str:
    # A request with a budget or timeout may be dropped unrun once it cannot make it: 504.
    timed_out = deadline_asked and response.status_code == 504
    assert response.status_code < 500 or timed_out, f"{response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert response.json()["error"], response.text
    return str(response.status_code)


def _fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
    )


def run_grpc(gw: GatewayProcess, tally: Tally, examples: int) -> None:
    with grpc.insecure_channel(gw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

        @_fuzz_settings(examples)
        @given(message=grpc_requests(), headers=HEADERS)
        def infer(message: service_pb2.ModelInferRequest, headers: dict[str, str]) -> None:
            start = time.perf_counter()
            answer = _grpc_answer(
                lambda: stub.ModelInfer(message, metadata=_ascii(headers), timeout=TIMEOUT_S),
                deadline_asked=bool(DEADLINE_WORDS & {*message.parameters, *headers}),
            )
            tally.record("grpc-infer", answer, time.perf_counter() - start)

        @_fuzz_settings(examples)
        @given(case=task_requests(), budget=st.sampled_from([None, "1", "50", "-1", "x"]))
        def task(case: tuple[str, str, str, list[int], bytes], budget: str | None) -> None:
            model, name, datatype, shape, raw = case
            message = service_pb2.ModelInferRequest(model_name=model)
            message.inputs.add(name=name, datatype=datatype, shape=shape)
            message.raw_input_contents.append(raw)
            metadata = [("x-latency-budget-ms", budget)] if budget else []
            start = time.perf_counter()
            answer = _grpc_answer(
                lambda: stub.ModelInfer(message, metadata=metadata, timeout=TIMEOUT_S),
                deadline_asked=budget is not None,
            )
            tally.record("grpc-task", answer, time.perf_counter() - start)

        @_fuzz_settings(max(10, examples // 5))
        @given(messages=st.lists(grpc_requests(), min_size=1, max_size=4))
        def stream(messages: list[service_pb2.ModelInferRequest]) -> None:
            start = time.perf_counter()
            for reply in stub.ModelStreamInfer(iter(messages), timeout=TIMEOUT_S):
                if reply.error_message:
                    code = reply.error_message.split(":", 1)[0]
                    allowed = {c.name for c in CLIENT_ERRORS} | {"DEADLINE_EXCEEDED"}
                    assert code in allowed, reply.error_message
            tally.record("grpc-stream", "done", time.perf_counter() - start)

        @_fuzz_settings(max(10, examples // 2))
        @given(
            method=st.sampled_from(
                ["ModelInfer", "ModelMetadata", "ModelConfig", "ModelReady", "RepositoryIndex"]
            ),
            payload=st.binary(max_size=200),
        )
        def garbage(method: str, payload: bytes) -> None:
            call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
            start = time.perf_counter()
            answer = _grpc_answer(lambda: call(payload, timeout=TIMEOUT_S), deadline_asked=False)
            tally.record("grpc-bytes", answer, time.perf_counter() - start)

        infer()
        task()
        stream()
        garbage()


def run_http(gw: GatewayProcess, tally: Tally, examples: int) -> None:
    with httpx.Client(base_url=f"http://{gw.http_url}", timeout=TIMEOUT_S) as client:

        @_fuzz_settings(examples)
        @given(model=MODEL_NAMES, body=http_bodies(), headers=HEADERS)
        def infer(model: str, body: tuple[bytes, dict[str, str]], headers: dict[str, str]) -> None:
            raw, extra = body
            sent = dict(_ascii({**headers, **extra}))
            start = time.perf_counter()
            response = client.post(f"/v2/models/{model or 'x'}/infer", content=raw, headers=sent)
            asked = any(w.encode() in raw for w in DEADLINE_WORDS) or bool(DEADLINE_WORDS & {*sent})
            answer = _http_answer(response, deadline_asked=asked)
            tally.record("http-infer", answer, time.perf_counter() - start)

        @_fuzz_settings(examples)
        @given(case=task_requests(), top_k=st.sampled_from([None, 0, 3, "5", -1, True]))
        def task(case: tuple[str, str, str, list[int], bytes], top_k: Any) -> None:
            model, name, datatype, shape, raw = case
            item = {
                "name": name,
                "datatype": datatype,
                "shape": shape,
                "parameters": {"binary_data_size": len(raw)},
            }
            doc: dict[str, Any] = {"inputs": [item]}
            if top_k is not None:
                doc["parameters"] = {"top_k": top_k}
            head = json.dumps(doc).encode()
            headers = {"Inference-Header-Content-Length": str(len(head))}
            start = time.perf_counter()
            response = client.post(f"/v2/models/{model}/infer", content=head + raw, headers=headers)
            tally.record("http-task", _http_answer(response), time.perf_counter() - start)

        @_fuzz_settings(max(10, examples // 2))
        @given(
            payload=st.binary(max_size=300),
            encoding=st.sampled_from([None, "gzip", "deflate", "br"]),
        )
        def garbage(payload: bytes, encoding: str | None) -> None:
            headers = {"content-encoding": encoding} if encoding else {}
            start = time.perf_counter()
            response = client.post("/v2/models/digits/infer", content=payload, headers=headers)
            tally.record("http-bytes", _http_answer(response), time.perf_counter() - start)

        infer()
        task()
        garbage()


def run_schemathesis(gw: GatewayProcess, tally: Tally, examples: int) -> None:
    schema = schemathesis.openapi.from_url(f"http://{gw.http_url}/openapi.json", timeout=TIMEOUT_S)
    served_model = {"name": "digits", "version": "1"}  # so cases also reach a real model
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE),
        schema.as_strategy(GenerationMode.NEGATIVE),
        schema.as_strategy(GenerationMode.POSITIVE, path_parameters=served_model),
        schema.as_strategy(GenerationMode.NEGATIVE, path_parameters=served_model),
    )

    @_fuzz_settings(examples)
    @given(case=cases)
    def call(case: Any) -> None:
        start = time.perf_counter()
        response = case.call(base_url=f"http://{gw.http_url}", timeout=TIMEOUT_S)
        assert response.status_code < 500, f"{case.method} {case.path}: {response.text[:500]}"
        if response.status_code >= 400:
            assert response.json()["error"], response.text
        label = f"openapi {case.method} {case.operation.path}"
        tally.record(label, str(response.status_code), time.perf_counter() - start)

    call()


def test_fuzzed_requests_get_client_errors_and_leave_no_trace(served):
    warm = Tally()
    run_grpc(served, warm, 20)
    run_http(served, warm, 20)
    run_schemathesis(served, warm, 20)
    rss_before, fds_before = served.rss_bytes(), served.open_fds()

    tally = Tally()
    start = time.perf_counter()
    run_grpc(served, tally, EXAMPLES)
    run_http(served, tally, EXAMPLES)
    run_schemathesis(served, tally, EXAMPLES)
    elapsed_s = time.perf_counter() - start
    time.sleep(0.5)  # let closed connections be reaped
    rss_after, fds_after = served.rss_bytes(), served.open_fds()

    mib = 1024 * 1024
    lines = [
        f"wire fuzz: {sum(tally.cases.values())} cases in {elapsed_s:.0f} s, slowest "
        f"{tally.slowest_s * 1000:.0f} ms; RSS {rss_before / mib:.1f} -> {rss_after / mib:.1f} "
        f"MiB ({(rss_after - rss_before) / mib:+.1f}), open fds {fds_before} -> {fds_after}",
        *(
            f"  {k}: {tally.cases[k]} cases, answers {tally.answers[k]}"
            for k in sorted(tally.cases)
        ),
    ]
    sys.stdout.write("\n" + "\n".join(lines) + "\n")  # shown with -s
    assert served.process.poll() is None, "the gateway died"
    assert tally.slowest_s < TIMEOUT_S
    assert fds_after - fds_before <= FD_SLACK
    assert rss_after - rss_before <= RSS_SLACK_BYTES
    assert httpx.get(f"http://{served.http_url}/v2/health/ready", timeout=5).status_code == 200
