"""Manifest reloads on a live gateway: atomic swaps, bad manifests, removals, the watcher."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.manifest import load_manifest, manifest_path, write_manifest
from tests.support.wire import Wire, image_input, metric


@pytest.fixture
def own_repo(repo, tmp_path):
    """A private copy of the digits and speech families, free to edit."""
    target = tmp_path / "repo"
    target.mkdir()
    for family in ("digits", "speech"):
        shutil.copy(manifest_path(repo, family), manifest_path(target, family))
        for path in repo.glob(f"{family}__*"):
            shutil.copytree(path, target / path.name)
    return target


def _set_quality(repo, family, variant, quality):
    manifest = load_manifest(manifest_path(repo, family))
    variants = [
        v.model_copy(update={"quality": quality}) if v.name == variant else v
        for v in manifest.variants
    ]
    write_manifest(repo, manifest.model_copy(update={"variants": variants}))


def test_changed_manifest_swaps_atomically(gateway_factory, own_repo):
    gw = gateway_factory(own_repo)
    wire = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))
    assert wire.infer("digits", image_input(0)).variant == "fp32"

    failures: list[Exception] = []
    variants: set[str] = set()
    stop = threading.Event()

    def hammer() -> None:
        client = Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url))
        while not stop.is_set():
            try:
                variants.add(client.infer("digits", image_input(255)).variant)
            except InferenceServerException as exc:
                failures.append(exc)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        _set_quality(own_repo, "digits", "fp32", 50.0)
        assert gw.call(gw.gateway.registry.refresh()) is True
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(30)
    assert failures == []
    assert variants <= {"fp32", "fp16"}
    result = wire.infer("digits", image_input(0))
    assert (result.variant, result.reason) == ("fp16", "most-accurate")
    assert metric(gw.scrape(), "gateway_variant_quality", model="digits", variant="fp32") == 50.0
    assert gw.call(gw.gateway.registry.refresh()) is False  # nothing changed since


def test_invalid_manifest_keeps_the_served_one(gateway_factory, own_repo):
    gw = gateway_factory(own_repo)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    manifest_path(own_repo, "digits").write_text('{"family": "digits"}', encoding="utf-8")
    gw.call(gw.gateway.registry.refresh())
    assert Wire("grpc", client).infer("digits", image_input(0)).variant == "fp32"
    rows = {m.name: m for m in client.get_model_repository_index().models}
    assert rows["digits"].state == "READY"
    assert "invalid manifest" in rows["digits"].reason
    assert metric(gw.scrape(), "gateway_registry_reloads_total", outcome="failed") == 1


def test_graph_that_differs_from_its_manifest_is_not_served(gateway_factory, own_repo):
    (own_repo / "digits__int8" / "1" / "model.onnx").write_bytes(b"tampered")
    # Routing from the profiles alone: the first request must not pay a busy start's loop lag
    # (and, soft, is never dropped unrun on a declared time the tiny graph does not take).
    gw = gateway_factory(own_repo, observed_weight=0.0, default_latency_budget_policy="soft")
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    rows = {m.name: m for m in client.get_model_repository_index().models}
    assert rows["digits__int8"].state == "UNAVAILABLE"
    assert "sha256" in rows["digits__int8"].reason
    result = Wire("grpc", client).infer(
        "digits", image_input(0), parameters={"latency_budget_ms": 8}
    )
    assert result.variant == "pruned-50-int8"  # int8 would fit but cannot serve


def test_removed_manifest_unserves_the_family(gateway_factory, own_repo):
    gw = gateway_factory(own_repo)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    manifest_path(own_repo, "speech").unlink()
    gw.call(gw.gateway.registry.refresh())
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("speech")
    assert "NOT_FOUND" in str(info.value.status())
    assert client.is_model_ready("digits")


def test_watcher_picks_up_changes(gateway_factory, own_repo):
    gw = gateway_factory(own_repo, reload_interval_s=0.1)
    client = grpcclient.InferenceServerClient(gw.grpc_url)
    _set_quality(own_repo, "digits", "fp32", 10.0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        config = client.get_model_config("digits__fp32").config
        if config.parameters["quality"].string_value == "10":
            break
        time.sleep(0.05)
    assert config.parameters["quality"].string_value == "10"
