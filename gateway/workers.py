"""``gateway serve --workers N``: N gateway processes on the same ports, one supervisor.

The supervisor reserves both ports (``SO_REUSEPORT``, so port 0 resolves once for all),
creates the live-load table every worker maps (:mod:`gateway.routing.shared`) and a
directory for prometheus-client's multiprocess mode, then starts the workers. Each worker
is a whole gateway (registry, backend, task pool, both servers) binding the same ports; the
kernel spreads incoming connections over them, and a gRPC channel stays on the worker that
accepted it. Once every worker listens, the supervisor prints the listening line.

SIGTERM or SIGINT goes to every worker, which stops accepting and finishes what it holds
(``shutdown_grace_s``); the supervisor exits when they have. A worker that dies otherwise
is replaced, its live-load cells cleared and its metrics marked dead.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.config import GatewaySettings

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0
"""Pause before replacing a worker that died, so a crash loop does not spin."""
STOP_MARGIN_S = 10.0
"""Time beyond the shutdown grace a worker gets before it is killed."""


def _reserve(host: str, port: int) -> socket.socket:
    """Bind (not listen on) ``host:port`` with SO_REUSEPORT, so workers can bind it too."""
    from gateway.service import bind

    return bind(host, port, reuse_port=True)


def _worker(
    settings: dict[str, Any], index: int, table: str, ready: multiprocessing.connection.Connection
) -> None:
    """One worker process: a whole gateway on the shared ports and table."""
    import asyncio

    from gateway.cli import configure_logging, serve_until_signalled
    from gateway.routing.shared import SharedTable

    worker_settings = GatewaySettings(**settings)
    configure_logging(worker_settings)
    shared = SharedTable(worker_settings.workers, index, Path(table))
    asyncio.run(serve_until_signalled(worker_settings, shared, lambda gw: ready.send(os.getpid())))


class Supervisor:
    """Starts, watches and stops the worker processes of one gateway."""

    def __init__(self, settings: GatewaySettings, on_listening: Callable[[int, int], None]) -> None:
        """Plan ``settings.workers`` workers; nothing starts until :meth:`run`.

        ``on_listening(http_port, grpc_port)`` is called once every worker listens.
        """
        self.settings = settings
        self.on_listening = on_listening
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[BaseProcess | None] = [None] * settings.workers
        self._stopping = False

    def _start(self, index: int, settings: dict[str, Any], table: Path) -> None:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker,
            args=(settings, index, str(table), send),
            name=f"gateway-worker-{index}",
            daemon=False,
        )
        process.start()
        send.close()
        self._workers[index] = process
        self._pipes[index] = receive

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; returns the exit status."""
        s = self.settings
        work_dir = Path(tempfile.mkdtemp(prefix="gateway-"))
        metrics_dir = work_dir / "metrics"
        metrics_dir.mkdir()
        # prometheus-client reads this when a worker imports it: set before any starts.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        from gateway.routing.shared import SharedTable

        table = work_dir / "live"
        SharedTable.create(table, s.workers)
        http = _reserve(s.host, s.http_port)
        grpc = _reserve(s.host, s.grpc_port)
        ports = {"http_port": http.getsockname()[1], "grpc_port": grpc.getsockname()[1]}
        settings = s.model_dump(mode="json") | ports
        self._pipes: list[multiprocessing.connection.Connection | None] = [None] * s.workers
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            for index in range(s.workers):
                self._start(index, settings, table)
            if not self._wait_ready():
                self._stop()
                return 1
            self.on_listening(ports["http_port"], ports["grpc_port"])
            self._watch(settings, table)
            return 0
        finally:
            self._stop()
            http.close()
            grpc.close()
            shutil.rmtree(work_dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _wait_ready(self) -> bool:
        """Wait for every worker to listen; False if one died first."""
        pending = {i: p for i, p in enumerate(self._pipes) if p is not None}
        while pending and not self._stopping:
            for index, pipe in list(pending.items()):
                process = self._workers[index]
                if pipe.poll(0.05):
                    pipe.recv()
                    del pending[index]
                elif process is not None and not process.is_alive():
                    log.error("worker %d exited with %s while starting", index, process.exitcode)
                    return False
        return not self._stopping

    def _watch(self, settings: dict[str, Any], table: Path) -> None:
        """Replace workers that die until asked to stop."""
        from prometheus_client import multiprocess

        from gateway.routing.shared import SharedTable

        cells = SharedTable(self.settings.workers, 0, table)
        while not self._stopping:
            time.sleep(0.2)
            for index, process in enumerate(self._workers):
                if process is None or process.is_alive() or self._stopping:
                    continue
                log.error("worker %d (pid %s) exited with %s", index, process.pid, process.exitcode)
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                cells.clear_worker(index)
                time.sleep(RESTART_DELAY_S)
                if not self._stopping:
                    self._start(index, settings, table)

    def _stop(self) -> None:
        """SIGTERM every worker, wait for them to drain, kill what outlives the grace."""
        alive = [p for p in self._workers if p is not None and p.is_alive()]
        for process in alive:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + STOP_MARGIN_S
        for process in alive:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %s did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
        self._workers = [None] * len(self._workers)
