"""``gateway serve`` as a real process: both servers up, clean shutdown on SIGTERM."""

from __future__ import annotations

import signal
import threading
import time

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from gateway.cli import main
from tests.support.gateway import spawn_serve
from tests.support.wire import Wire, image_input


def test_serve_answers_both_protocols_and_stops_gracefully(repo):
    proc, ports = spawn_serve(repo, {})
    try:
        assert ports["event"] == "listening"
        grpc_url = f"127.0.0.1:{ports['grpc_port']}"
        http_url = f"127.0.0.1:{ports['http_port']}"
        assert httpclient.InferenceServerClient(http_url).is_server_ready()
        wire = Wire("grpc", grpcclient.InferenceServerClient(grpc_url))
        assert wire.infer("digits", image_input(0)).variant == "fp32"

        # A request in flight when SIGTERM arrives still gets its answer.
        outcome: list[str] = []

        def slow() -> None:
            result = Wire("grpc", grpcclient.InferenceServerClient(grpc_url)).infer(
                "slow", image_input(0)
            )
            outcome.append(result.variant)

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert proc.wait(timeout=30) == 0
        assert outcome == ["fp32"]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_settings_exit_with_a_message(repo, tmp_path, capsys):
    assert main(["serve", "--repository", str(tmp_path / "none")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    args = ["serve", "--repository", str(repo), "--http-port", "9000", "--grpc-port", "9000"]
    assert main(args) == 2
    assert "must differ" in capsys.readouterr().err
