"""Publishing while requests flow: new variants, a half-written manifest, a half-copied graph.

Client threads (gRPC and HTTP, routed and pinned) call the gateway without pause while the
test rewrites the family's manifest the way a build pipeline would, and a few ways it can
go wrong. Not one request may fail, every answer must be right, and no answer may come
from a variant before its files are complete.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.manifest import load_manifest, manifest_path, write_manifest
from tests.support.wire import Wire, image_input, metric

RELOAD_INTERVAL_S = 0.1


@dataclass
class Load:
    """Requests sent by the client threads and what came back."""

    answers: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def worker(self, wire: Wire, model: str) -> None:
        while not self.stop.is_set():
            try:
                result = wire.infer(model, image_input(255))
            except Exception as exc:  # any failure at all is a finding
                self.failures.append(f"{wire.protocol} {model}: {exc}")
                continue
            label = result.outputs["labels"][0][0]
            if label not in (b"9", "9"):
                self.wrong.append(f"{result.variant}: {label!r}")
            self.answers.append((time.monotonic(), result.variant))

    def variants_since(self, t: float) -> set[str]:
        return {v for at, v in list(self.answers) if at >= t}


def _wait(condition: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _with_variant(repo, manifest, source: str, name: str, quality: float, graph: bytes | None):
    """Copy ``source``'s files to a new variant (``graph`` replaces the graph file's bytes) and
    return ``manifest`` with the new variant added (not written yet)."""
    base = manifest.variant(source)
    src, dst = repo / base.model_name, repo / f"{manifest.family}__{name}"
    shutil.copytree(src, dst, dirs_exist_ok=True)
    if graph is not None:
        (dst / "1" / "model.onnx").write_bytes(graph)
    artifacts = [
        a.model_copy(update={"path": a.path.replace(base.model_name, dst.name, 1)})
        for a in base.artifacts
    ]
    variant = base.model_copy(
        update={"name": name, "model_name": dst.name, "quality": quality, "artifacts": artifacts}
    )
    return manifest.model_copy(update={"variants": [*manifest.variants, variant]})


def test_publishing_under_load_loses_nothing_and_serves_no_half_loaded_variant(
    repo, tmp_path, gateway_factory, caplog
):
    own = tmp_path / "repo"
    own.mkdir()
    shutil.copy(manifest_path(repo, "digits"), manifest_path(own, "digits"))
    for path in repo.glob("digits__*"):
        shutil.copytree(path, own / path.name)
    caplog.set_level(logging.INFO, logger="gateway.registry")
    gw = gateway_factory(own, reload_interval_s=RELOAD_INTERVAL_S, observed_weight=0.0)

    load = Load()
    clients = [
        (Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url)), "digits"),
        (Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url)), "digits"),
        (Wire("http", httpclient.InferenceServerClient(gw.http_url)), "digits"),
        (Wire("http", httpclient.InferenceServerClient(gw.http_url)), "digits"),
        (Wire("grpc", grpcclient.InferenceServerClient(gw.grpc_url)), "digits__fp16"),
    ]
    threads = [threading.Thread(target=load.worker, args=c) for c in clients]
    for thread in threads:
        thread.start()
    try:
        _wait(lambda: len(load.answers) > 50 and load.variants_since(0) == {"fp32", "fp16"})
        graph = (own / "digits__fp32" / "1" / "model.onnx").read_bytes()
        path = manifest_path(own, "digits")

        # 1. A new, more accurate variant: files first, then the manifest (atomically).
        published = time.monotonic()
        first = _with_variant(own, load_manifest(path), "fp32", "retrained", 99.0, None)
        write_manifest(own, first)
        _wait(lambda: "retrained" in load.variants_since(published))

        # 2. A manifest caught half-written (a writer that does not rename): refused, the
        # previous one keeps serving; one log line, not one per check.
        text = path.read_text(encoding="utf-8")
        path.write_text(text[: len(text) // 2], encoding="utf-8")
        broken = time.monotonic()
        time.sleep(6 * RELOAD_INTERVAL_S)
        assert load.variants_since(broken + 2 * RELOAD_INTERVAL_S) == {"retrained", "fp16"}

        # 3. The manifest names a variant whose graph is still being copied: never served.
        half = _with_variant(own, first, "fp32", "retrained-2", 99.5, graph[: len(graph) // 2])
        write_manifest(own, half)
        time.sleep(6 * RELOAD_INTERVAL_S)
        copied = time.monotonic()
        (own / "digits__retrained-2" / "1" / "model.onnx").write_bytes(graph)
        write_manifest(own, half)  # the pipeline publishes again once the copy is complete
        _wait(lambda: "retrained-2" in load.variants_since(copied))
        early = [at for at, v in list(load.answers) if v == "retrained-2" and at < copied]
        assert early == []

        # 4. Retire variants while requests may still be running on them.
        current = load_manifest(path)
        kept = [v for v in current.variants if v.name not in ("retrained", "fp32")]
        retired = time.monotonic()
        write_manifest(own, current.model_copy(update={"variants": kept}))
        _wait(lambda: len(load.variants_since(retired)) > 0)
        time.sleep(4 * RELOAD_INTERVAL_S)
        settled = time.monotonic()
        _wait(lambda: len([1 for at, _ in list(load.answers) if at > settled]) > 20)
        assert load.variants_since(settled) == {"retrained-2", "fp16"}
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(30)

    sys.stdout.write(
        f"\nreload under load: {len(load.answers) + len(load.failures)} requests, "
        f"{len(load.failures)} failed, {len(load.wrong)} wrong answers\n"
    )
    assert load.failures == []
    assert load.wrong == []
    assert len(load.answers) > 300
    invalid = [r for r in caplog.records if "invalid manifest digits.manifest.json" in r.message]
    assert len(invalid) == 1, [r.message for r in invalid]
    unservable = [r for r in caplog.records if "digits__retrained-2: not servable" in r.message]
    assert len(unservable) == 1 and "sha256" in unservable[0].message
    samples = gw.scrape()
    assert metric(samples, "gateway_registry_reloads_total", outcome="failed") == 1
    assert metric(samples, "gateway_registry_reloads_total", outcome="loaded") >= 4
