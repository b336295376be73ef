"""Request ids end to end: the client's or a generated one, echoed, and in one log line each."""

from __future__ import annotations

import json
import logging
import re

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.auth import hash_key, new_key

KEY = new_key()
SECRET_TEXT = "my confidential sentence"
LINE = re.compile(
    r"request id=(?P<id>\S+) protocol=(?P<protocol>\w+) model=(?P<model>\S+) "
    r"variant=(?P<variant>\S+) code=(?P<code>\w+) ms=[0-9.]+ key=(?P<key>\S+)"
)


@pytest.fixture
def rgw(repo, tmp_path, gateway_factory):
    keys = tmp_path / "keys.json"
    entry = {"id": "ci-bot", "sha256": hash_key(KEY), "scopes": ["inference"]}
    keys.write_text(json.dumps({"keys": [entry]}), encoding="utf-8")
    return gateway_factory(repo, auth_keys_file=keys)


def _text_input(lib):
    tensor = lib.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([SECRET_TEXT.encode()], dtype=object))
    return tensor


def _lines(caplog) -> list[dict[str, str]]:
    found = []
    for record in caplog.records:
        if record.name == "gateway.requests":
            match = LINE.fullmatch(record.getMessage())
            assert match, record.getMessage()
            found.append(match.groupdict())
    return found


def test_ids_are_echoed_generated_and_logged_without_keys_or_payloads(rgw, caplog):
    caplog.set_level(logging.INFO, logger="gateway.requests")
    headers = {"authorization": f"Bearer {KEY}"}
    grpc_client = grpcclient.InferenceServerClient(rgw.grpc_url)
    given = grpc_client.infer(
        "translation", [_text_input(grpcclient)], request_id="order-17", headers=headers
    )
    assert given.get_response().id == "order-17"
    generated = grpc_client.infer("translation", [_text_input(grpcclient)], headers=headers)
    new_id = generated.get_response().id
    assert re.fullmatch(r"[0-9a-f]{32}", new_id)

    http_client = httpclient.InferenceServerClient(rgw.http_url)
    result = http_client.infer(
        "translation", [_text_input(httpclient)], request_id="web-3", headers=dict(headers)
    )  # tritonclient.http adds its own entries to the dict it is given
    assert result.get_response()["id"] == "web-3"
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    response = httpx.post(
        f"http://{rgw.http_url}/v2/models/translation/infer",
        json=body,
        headers={**headers, "x-request-id": "from-proxy"},
    )
    assert response.headers["x-request-id"] == "from-proxy" == response.json()["id"]

    with pytest.raises(InferenceServerException):
        grpc_client.infer("nope", [_text_input(grpcclient)], request_id="bad-1", headers=headers)

    lines = {line["id"]: line for line in _lines(caplog)}
    assert set(lines) == {"order-17", new_id, "web-3", "from-proxy", "bad-1"}
    assert lines["order-17"] == {
        "id": "order-17",
        "protocol": "grpc",
        "model": "translation",
        "variant": "fp32",
        "code": "OK",
        "key": "ci-bot",
    }
    assert lines["web-3"]["protocol"] == "http" and lines["web-3"]["key"] == "ci-bot"
    assert lines["bad-1"]["code"] == "NOT_FOUND" and lines["bad-1"]["model"] == "_unknown"
    for secret in (KEY, hash_key(KEY), SECRET_TEXT):
        assert secret not in caplog.text


def test_a_header_id_must_be_printable(rgw):
    body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hi"]}]}
    response = httpx.post(
        f"http://{rgw.http_url}/v2/models/translation/infer",
        json=body,
        headers={"authorization": f"Bearer {KEY}", "x-request-id": "x" * 300},
    )
    assert response.status_code == 400 and "request id" in response.json()["error"]
