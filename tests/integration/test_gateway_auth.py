"""API keys on a real gateway, both protocols, stock tritonclient: scopes, open health, rotation."""

from __future__ import annotations

import json
import logging
import time

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.auth import hash_key, new_key
from tests.support.wire import PROTOCOLS, Wire, code_of, expected, image_input, metric, objects

INFER_KEY, OPS_KEY, METRICS_KEY = new_key(), new_key(), new_key()
PAYLOAD_TEXT = "a secret sentence that must never reach a log"


def write_keys(path, *entries):
    doc = {
        "keys": [
            {"id": key_id, "sha256": hash_key(key), "scopes": list(scopes)}
            for key_id, key, scopes in entries
        ]
    }
    replace_file(path, json.dumps(doc))


def replace_file(path, text):
    # Atomic, as a Secret volume updates: a reload never sees a half-written file, so
    # each change is one reload (a plain write_text can be read truncated, then again).
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


KEYS = [
    ("ci", INFER_KEY, ["inference"]),
    ("ops", OPS_KEY, ["inference", "admin", "metrics"]),
    ("prometheus", METRICS_KEY, ["metrics"]),
]


@pytest.fixture(scope="module")
def key_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("auth") / "keys.json"
    write_keys(path, *KEYS)
    return path


@pytest.fixture(scope="module")
def agw(repo, key_path, module_gateway_factory):
    return module_gateway_factory(repo, auth_keys_file=key_path, auth_open_metrics=False)


def client_of(protocol, gw):
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(gw.grpc_url)
    return httpclient.InferenceServerClient(gw.http_url, network_timeout=30)


def bearer(key):
    return {"authorization": f"Bearer {key}"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize(
    ("headers", "code", "message"),
    [
        ({}, "UNAUTHENTICATED", "needs an API key"),
        (bearer(new_key()), "UNAUTHENTICATED", "unknown API key"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "UNAUTHENTICATED", "Bearer <key>"),
        (bearer(METRICS_KEY), "PERMISSION_DENIED", "key 'prometheus' lacks the 'inference'"),
    ],
    ids=["no-key", "unknown-key", "basic-auth", "wrong-scope"],
)
def test_inference_without_the_right_key_is_refused(agw, protocol, headers, code, message):
    wire = Wire(protocol, client_of(protocol, agw))
    with pytest.raises(InferenceServerException) as info:
        wire.infer("digits", image_input(0), headers=headers or None)
    assert code_of(info.value, protocol) == expected(code, protocol)
    assert message in info.value.message()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_inference_key_serves_as_a_bearer_token_or_x_api_key(agw, protocol):
    wire = Wire(protocol, client_of(protocol, agw))
    assert wire.infer("digits", image_input(0), headers=bearer(INFER_KEY)).variant == "fp32"
    result = wire.infer("digits", image_input(255), headers={"x-api-key": OPS_KEY})
    assert result.outputs["labels"][0][0] in (b"9", "9")
    client = client_of(protocol, agw)
    assert client.get_model_metadata("digits", headers=bearer(INFER_KEY))
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("digits")
    assert code_of(info.value, protocol) == expected("UNAUTHENTICATED", protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_health_stays_open_for_probes(agw, protocol):
    client = client_of(protocol, agw)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("digits")


def test_streams_and_admin_calls_check_their_scope(agw):
    with grpc.insecure_channel(agw.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits")
        with pytest.raises(grpc.RpcError) as info:
            list(stub.ModelStreamInfer(iter([request]), timeout=10))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        load = service_pb2.RepositoryModelLoadRequest(model_name="digits")
        with pytest.raises(grpc.RpcError) as info:
            stub.RepositoryModelLoad(load, metadata=[("x-api-key", INFER_KEY)], timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'admin'" in info.value.details()


def test_http_answers_401_with_a_challenge_and_guards_metrics(agw):
    base = f"http://{agw.http_url}"
    response = httpx.post(f"{base}/v2/models/digits/infer", content=b"{not even json")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "needs an API key" in response.json()["error"]
    assert httpx.get(f"{base}/metrics").status_code == 401
    assert httpx.get(f"{base}/metrics", headers=bearer(INFER_KEY)).status_code == 403
    scraped = httpx.get(f"{base}/metrics", headers=bearer(METRICS_KEY))
    assert scraped.status_code == 200 and "gateway_auth_rejections_total" in scraped.text
    assert httpx.get(f"{base}/openapi.json").status_code == 401
    assert httpx.get(f"{base}/openapi.json", headers=bearer(INFER_KEY)).status_code == 200


def test_metrics_are_open_by_default(repo, key_path, gateway_factory):
    gw = gateway_factory(repo, auth_keys_file=key_path)
    assert httpx.get(f"http://{gw.http_url}/metrics").status_code == 200
    assert httpx.get(f"http://{gw.http_url}/v2").status_code == 401


def test_keys_rotate_without_a_restart_and_never_reach_the_log(
    repo, tmp_path, gateway_factory, caplog
):
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "keys.json"
    write_keys(path, ("old", INFER_KEY, ["inference"]))
    gw = gateway_factory(
        repo, auth_keys_file=path, secrets_reload_interval_s=0.05, log_level="debug"
    )
    wire = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))
    text = [("text", "BYTES", objects(PAYLOAD_TEXT.encode()))]
    assert wire.infer("translation", text, headers=bearer(INFER_KEY)).outputs

    def accepted(key: str) -> bool:
        try:
            wire.infer("digits", image_input(0), headers=bearer(key))
        except InferenceServerException as exc:
            assert code_of(exc, "grpc") == "UNAUTHENTICATED"
            return False
        return True

    def wait_for(condition) -> None:
        deadline = time.monotonic() + 10
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert condition()

    write_keys(path, ("old", INFER_KEY, ["inference"]), ("new", OPS_KEY, ["inference"]))
    wait_for(lambda: accepted(OPS_KEY))
    assert accepted(INFER_KEY)  # both during the overlap
    write_keys(path, ("new", OPS_KEY, ["inference"]))
    wait_for(lambda: not accepted(INFER_KEY))

    replace_file(path, "{half a file")
    wait_for(
        lambda: (
            metric(gw.scrape(), "gateway_secret_reloads_total", kind="keys", outcome="failed") == 1
        )
    )
    assert accepted(OPS_KEY)  # the previous keys stay in service
    samples = gw.scrape()
    assert metric(samples, "gateway_secret_reloads_total", kind="keys", outcome="loaded") == 2
    failures = [r for r in caplog.records if "key file not reloaded" in r.getMessage()]
    assert len(failures) == 1
    for secret in (INFER_KEY, OPS_KEY, hash_key(INFER_KEY), PAYLOAD_TEXT):
        assert secret not in caplog.text


def test_a_bad_key_file_stops_the_gateway_from_starting(repo, tmp_path, gateway_factory):
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps({"keys": [{"id": "x", "sha256": INFER_KEY, "scopes": ["inference"]}]})
    )
    with pytest.raises(ValueError, match="never the key itself"):
        gateway_factory(repo, auth_keys_file=path)


def test_admin_keys_unload_and_load_families(repo, key_path, gateway_factory):
    gw = gateway_factory(repo, auth_keys_file=key_path)
    ops, ci = bearer(OPS_KEY), bearer(INFER_KEY)
    grpc_client = grpcclient.InferenceServerClient(gw.grpc_url)
    base = f"http://{gw.http_url}/v2/repository/models"
    with pytest.raises(InferenceServerException) as info:
        grpc_client.unload_model("digits", headers=ci)
    assert code_of(info.value, "grpc") == "PERMISSION_DENIED"
    assert httpx.post(f"{base}/digits/unload", headers=ci).status_code == 403

    grpc_client.unload_model("digits", headers=ops)
    wire = Wire("grpc", grpc_client)
    with pytest.raises(InferenceServerException) as info:
        wire.infer("digits", image_input(0), headers=ci)
    assert code_of(info.value, "grpc") == "NOT_FOUND"
    assert wire.infer(
        "speech__int8", [("audio", "FP32", np.zeros((1, 800), np.float32))], headers=ci
    )

    assert httpx.post(f"{base}/digits/load", headers=ops).status_code == 200
    assert wire.infer("digits", image_input(0), headers=ci).variant == "fp32"
    assert httpx.post(f"{base}/nope/unload", headers=ops).status_code == 404
    response = httpx.post(f"{base}/digits__int8/unload", headers=ops)
    assert (
        response.status_code == 400
        and "reject it in the digits manifest" in response.json()["error"]
    )
    assert httpx.post(f"{base}/broken/load", headers=ops).status_code == 503
    grpc_client.load_model("translation", headers=ops)  # re-read now: no change, still served
    assert grpc_client.is_model_ready("translation")
