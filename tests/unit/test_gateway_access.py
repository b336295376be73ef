"""API keys as hashes, scopes, the one access check, rotation, and each transport's table."""

from __future__ import annotations

import json
import logging
import os

import pytest
from prometheus_client import CollectorRegistry

from gateway.auth import (
    ANONYMOUS,
    Access,
    AccessPolicy,
    KeyFileSource,
    KeyStore,
    Scope,
    hash_key,
    main,
    new_key,
    presented_key,
    read_key_file,
)
from gateway.errors import PermissionDeniedError, UnauthenticatedError
from gateway.grpc.guard import method_access
from gateway.http.guard import route_access
from gateway.metrics import GatewayMetrics

INFER_KEY, OPS_KEY, METRICS_KEY = new_key(), new_key(), new_key()


def key_file(path, *entries):
    path.write_text(json.dumps({"keys": list(entries)}), encoding="utf-8")
    return path


def entry(key_id, key, *scopes):
    return {"id": key_id, "sha256": hash_key(key), "scopes": list(scopes)}


@pytest.fixture
def keys(tmp_path):
    return key_file(
        tmp_path / "keys.json",
        entry("ci", INFER_KEY, "inference"),
        entry("ops", OPS_KEY, "inference", "admin", "metrics"),
        entry("prometheus", METRICS_KEY, "metrics"),
    )


def policy_of(path, **options):
    return AccessPolicy(KeyStore(read_key_file(path)), **options)


def bearer(key):
    return {"authorization": f"Bearer {key}"}


def test_generated_keys_are_random_and_stored_as_their_digest():
    assert new_key() != new_key() and new_key().startswith("vg_")
    assert len(INFER_KEY) > 40
    digest = hash_key("abc")
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"keys": [{"id": "ci", "sha256": INFER_KEY, "scopes": ["inference"]}]}, "never the key"),
        ({"keys": [{"id": "ci", "sha256": "ab" * 32, "scopes": ["everything"]}]}, "scopes"),
        ({"keys": [{"id": "ci", "sha256": "ab" * 32, "scopes": []}]}, "scopes"),
        ({"keys": [{"id": "ci", "sha256": "ab" * 32, "scope": ["inference"]}]}, "scope"),
        ({"keys": [{"id": "a b", "sha256": "ab" * 32, "scopes": ["inference"]}]}, "id"),
        (
            {
                "keys": [
                    {"id": "ci", "sha256": "ab" * 32, "scopes": ["inference"]},
                    {"id": "ci", "sha256": "cd" * 32, "scopes": ["inference"]},
                ]
            },
            "repeated: ci",
        ),
        (
            {
                "keys": [
                    {"id": "a", "sha256": "ab" * 32, "scopes": ["inference"]},
                    {"id": "b", "sha256": "AB" * 32, "scopes": ["metrics"]},
                ]
            },
            "1 digests",
        ),
    ],
    ids=["plaintext", "unknown-scope", "no-scope", "typo", "bad-id", "same-id", "same-digest"],
)
def test_invalid_key_files_are_refused_with_a_reason(tmp_path, doc, message):
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_key_file(path)


def test_a_missing_or_malformed_key_file_says_so(tmp_path):
    with pytest.raises(ValueError, match="cannot read the key file"):
        read_key_file(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid key file"):
        read_key_file(tmp_path / "bad.json")


@pytest.mark.parametrize(
    ("headers", "key"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer   abc  "}, "abc"),
        ({"x-api-key": "abc"}, "abc"),
        ({"authorization": "Bearer abc", "x-api-key": "other"}, "abc"),
        ({}, None),
    ],
)
def test_the_key_comes_from_a_bearer_header_or_x_api_key(headers, key):
    assert presented_key(headers) == key


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer   ", "abc"])
def test_other_authorization_schemes_are_unauthenticated(value):
    with pytest.raises(UnauthenticatedError):
        presented_key({"authorization": value})


def test_without_a_key_store_every_call_is_open():
    policy = AccessPolicy(None)
    assert not policy.enabled
    for access in Access:
        assert policy.check({}, access) is ANONYMOUS


def test_each_scope_opens_its_calls_only(keys):
    policy = policy_of(keys, open_metrics=False)
    assert policy.check(bearer(INFER_KEY), Access.INFERENCE).key_id == "ci"
    assert policy.check({"x-api-key": OPS_KEY}, Access.ADMIN).key_id == "ops"
    assert policy.check(bearer(METRICS_KEY), Access.METRICS).key_id == "prometheus"
    with pytest.raises(PermissionDeniedError, match="key 'ci' lacks the 'admin' scope"):
        policy.check(bearer(INFER_KEY), Access.ADMIN)
    with pytest.raises(PermissionDeniedError, match="'metrics'"):
        policy.check(bearer(INFER_KEY), Access.METRICS)
    with pytest.raises(PermissionDeniedError, match="'inference'"):
        policy.check(bearer(METRICS_KEY), Access.INFERENCE)


def test_missing_and_unknown_keys_are_unauthenticated(keys):
    policy = policy_of(keys)
    with pytest.raises(UnauthenticatedError, match="needs an API key"):
        policy.check({}, Access.INFERENCE)
    with pytest.raises(UnauthenticatedError, match="unknown API key"):
        policy.check(bearer(new_key()), Access.INFERENCE)
    with pytest.raises(UnauthenticatedError, match="unknown API key"):
        policy.check(bearer(hash_key(INFER_KEY)), Access.INFERENCE)  # the digest is no key


def test_health_and_metrics_are_open_by_default_and_closable(keys):
    policy = policy_of(keys)
    assert policy.check({}, Access.HEALTH) is ANONYMOUS
    assert policy.check({}, Access.METRICS) is ANONYMOUS
    closed = policy_of(keys, open_health=False, open_metrics=False)
    with pytest.raises(UnauthenticatedError):
        closed.check({}, Access.HEALTH)
    with pytest.raises(UnauthenticatedError):
        closed.check({}, Access.METRICS)
    assert closed.check(bearer(METRICS_KEY), Access.HEALTH).key_id == "prometheus"


def test_refusals_are_counted_by_code(keys):
    metrics = GatewayMetrics(CollectorRegistry())
    policy = AccessPolicy(KeyStore(read_key_file(keys)), metrics=metrics)
    for headers, access in [({}, Access.INFERENCE), (bearer(METRICS_KEY), Access.INFERENCE)]:
        with pytest.raises((UnauthenticatedError, PermissionDeniedError)):
            policy.check(headers, access)
    policy.check(bearer(INFER_KEY), Access.INFERENCE)
    value = metrics.registry.get_sample_value
    assert value("gateway_auth_rejections_total", {"code": "UNAUTHENTICATED"}) == 1
    assert value("gateway_auth_rejections_total", {"code": "PERMISSION_DENIED"}) == 1


def test_every_stored_digest_is_compared(keys):
    store = KeyStore(read_key_file(keys))
    assert len(store) == 3
    for key, key_id in [(INFER_KEY, "ci"), (OPS_KEY, "ops"), (METRICS_KEY, "prometheus")]:
        found = store.lookup(key)
        assert found is not None and found.key_id == key_id
    assert store.lookup(INFER_KEY + "x") is None
    assert store.lookup("\udcff") is None  # undecodable text is just an unknown key


def _touch(path, step):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + step * 1_000_000_000))


def test_rotation_swaps_keys_and_a_bad_file_keeps_the_old_ones(tmp_path, caplog):
    path = key_file(tmp_path / "keys.json", entry("old", INFER_KEY, "inference"))
    source = KeyFileSource.open(path)
    policy = AccessPolicy(source.store)
    assert source.refresh() is None  # unchanged

    key_file(path, entry("new", OPS_KEY, "inference"))
    _touch(path, 1)
    assert source.refresh() is True
    assert policy.check(bearer(OPS_KEY), Access.INFERENCE).key_id == "new"
    with pytest.raises(UnauthenticatedError):
        policy.check(bearer(INFER_KEY), Access.INFERENCE)

    caplog.set_level(logging.INFO, logger="gateway.auth")
    path.write_text('{"keys": [{"id": "x"}]}', encoding="utf-8")
    _touch(path, 2)
    assert source.refresh() is False
    assert source.refresh() is None  # the same bad file is reported once
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "previous keys stay in service" in errors[0].getMessage()
    assert policy.check(bearer(OPS_KEY), Access.INFERENCE).key_id == "new"

    path.unlink()
    assert source.refresh() is False
    assert policy.check(bearer(OPS_KEY), Access.INFERENCE).key_id == "new"
    assert OPS_KEY not in caplog.text and INFER_KEY not in caplog.text


@pytest.mark.parametrize(
    ("method", "access"),
    [
        ("ServerLive", Access.HEALTH),
        ("ServerReady", Access.HEALTH),
        ("ModelReady", Access.HEALTH),
        ("ModelInfer", Access.INFERENCE),
        ("ModelStreamInfer", Access.INFERENCE),
        ("ModelMetadata", Access.INFERENCE),
        ("RepositoryIndex", Access.INFERENCE),
        ("RepositoryModelLoad", Access.ADMIN),
        ("RepositoryModelUnload", Access.ADMIN),
        ("SystemSharedMemoryRegister", Access.ADMIN),
        ("SomethingNew", Access.ADMIN),
    ],
)
def test_grpc_methods_need_their_access(method, access):
    assert method_access(f"/inference.GRPCInferenceService/{method}") is access


@pytest.mark.parametrize(
    ("path", "access"),
    [
        ("/v2/health/live", Access.HEALTH),
        ("/v2/health/ready", Access.HEALTH),
        ("/v2/models/digits/ready", Access.HEALTH),
        ("/v2/models/digits/versions/1/ready", Access.HEALTH),
        ("/metrics", Access.METRICS),
        ("/v2/models/digits/infer", Access.INFERENCE),
        ("/v2/models/digits", Access.INFERENCE),
        ("/v2", Access.INFERENCE),
        ("/openapi.json", Access.INFERENCE),
        ("/v2/repository/index", Access.INFERENCE),
        ("/v2/repository/models/digits/load", Access.ADMIN),
        ("/v2/repository/models/digits/unload", Access.ADMIN),
        ("/v2/health/live/../../models/digits/infer", Access.INFERENCE),
    ],
)
def test_http_routes_need_their_access(path, access):
    assert route_access(path) is access


def test_scopes_are_the_documented_three():
    assert {s.value for s in Scope} == {"inference", "admin", "metrics"}


def test_key_tool_makes_an_entry_and_checks_a_file(tmp_path, capsys, monkeypatch):
    assert main(["new", "--id", "ci-bot", "--scope", "inference", "--scope", "metrics"]) == 0
    key, line = capsys.readouterr().out.strip().splitlines()
    made = json.loads(line)
    assert made == {"id": "ci-bot", "sha256": hash_key(key), "scopes": ["inference", "metrics"]}
    path = key_file(tmp_path / "keys.json", made)
    assert main(["check", str(path)]) == 0
    assert "ci-bot: inference, metrics" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text("[]", encoding="utf-8")
    assert main(["check", str(tmp_path / "bad.json")]) == 1
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(key + "\n"))
    assert main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_key(key)
