"""SIGTERM while requests flow on both protocols: every request the gateway took is answered.

A real ``gateway serve`` process gets steady load from gRPC and HTTP client threads, a part
of it on a variant that takes tens of milliseconds, so requests are in flight when the
signal arrives. Each request sent before the signal must succeed; those sent after may be
refused at the connection (gRPC UNAVAILABLE or CANCELLED, HTTP connect or disconnect before
any response), which a client can safely retry, and nothing else. The process exits 0.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import httpx
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.support.gateway import spawn_serve
from tests.support.wire import Wire, image_input

MARGIN_S = 0.02
"""Requests sent less than this before the signal may still be on their way to the server."""


@dataclass
class Outcome:
    started_s: float
    ok: bool
    refused: bool = False
    detail: str = ""
    ended_s: float = field(default_factory=time.monotonic)


@dataclass
class Traffic:
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    sent: dict[int, float] = field(default_factory=dict)
    """Per client thread, when its unanswered request went out."""

    def _send(self) -> float:
        started = time.monotonic()
        self.sent[threading.get_ident()] = started
        return started

    def _answered(self, outcome: Outcome) -> None:
        self.sent.pop(threading.get_ident(), None)
        self.outcomes.append(outcome)

    def unanswered_since(self, before_s: float) -> int:
        """Requests sent before ``before_s`` and not answered yet."""
        return sum(1 for started in list(self.sent.values()) if started < before_s)

    def grpc_worker(self, url: str, model: str) -> None:
        wire = Wire("grpc", grpcclient.InferenceServerClient(url))
        while not self.stop.is_set():
            started = self._send()
            try:
                wire.infer(model, image_input(200))
                self._answered(Outcome(started, ok=True))
            except InferenceServerException as exc:
                # Refused, not taken: the server is gone or shutting down. (Before the signal
                # even these count as lost, below.)
                refused = str(exc.status()) in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED")
                self._answered(Outcome(started, False, refused, f"grpc {exc}"))
                time.sleep(0.01)

    def http_worker(self, url: str, model: str) -> None:
        body = {"inputs": [{"name": "image", "shape": [8, 8, 1], "datatype": "UINT8",
                            "data": [200] * 64}]}  # fmt: skip
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self.stop.is_set():
                started = self._send()
                try:
                    response = client.post(f"/v2/models/{model}/infer", json=body)
                except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                    # The connection closed or reset without an answer: at shutdown a request
                    # written to a keep-alive connection the server is closing (Linux resets
                    # a socket closed with unread data), or the port is closed. Fine after the
                    # signal; before it, the request counts as lost (see below).
                    self._answered(Outcome(started, False, True, f"http {exc!r}"))
                    time.sleep(0.01)
                    continue
                ok = response.status_code == 200 and response.json()["outputs"]
                detail = "" if ok else f"http {response.status_code} {response.text[:200]}"
                self._answered(Outcome(started, bool(ok), False, detail))


def test_sigterm_under_load_answers_every_request_it_took(repo):
    proc, ports = spawn_serve(repo, {"GATEWAY_SHUTDOWN_GRACE_S": "10"})
    try:
        grpc_url = f"127.0.0.1:{ports['grpc_port']}"
        http_url = f"http://127.0.0.1:{ports['http_port']}"
        traffic = Traffic()
        workers = [
            (traffic.grpc_worker, grpc_url, "busy__fp32"),
            (traffic.grpc_worker, grpc_url, "busy__fp32"),
            (traffic.grpc_worker, grpc_url, "digits"),
            (traffic.http_worker, http_url, "busy__fp32"),
            (traffic.http_worker, http_url, "digits"),
        ]
        threads = [threading.Thread(target=w, args=a) for w, *a in workers]
        for thread in threads:
            thread.start()
        time.sleep(2.0)
        # Signal while requests are surely with the server: sent well before, not answered.
        deadline = time.monotonic() + 10
        while traffic.unanswered_since(time.monotonic() - 2 * MARGIN_S) < 3:
            assert time.monotonic() < deadline, "never three requests in flight at once"
            time.sleep(0.001)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        exited_s = time.monotonic() - signalled
        time.sleep(0.3)  # the workers see the closed ports
        traffic.stop.set()
        for thread in threads:
            thread.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    _, stderr = proc.communicate(timeout=10)

    before = [o for o in traffic.outcomes if o.started_s < signalled - MARGIN_S]
    lost = [f"{o.started_s - signalled:+.3f} s {o.detail}" for o in before if not o.ok]
    lost += [o.detail for o in traffic.outcomes if not o.ok and not o.refused]
    in_flight = [o for o in before if o.ended_s > signalled]
    refused = [o for o in traffic.outcomes if o.refused]
    sys.stdout.write(
        f"\nshutdown under load: {len(before)} requests sent before SIGTERM, {len(in_flight)} "
        f"of them in flight at the signal, {len(lost)} lost; {len(refused)} refused at the "
        f"connection afterwards; exit {code} in {exited_s:.2f} s\n"
    )
    assert code == 0, stderr[-2000:]
    assert len(before) > 20 and len(in_flight) >= 2
    assert lost == [], lost
    assert "Traceback" not in stderr
