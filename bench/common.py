"""What the benchmarks share: sample requests, a gateway launcher, timing loops, reports.

Latency is measured one request at a time with the paths taking turns in a shuffled order
(so every path sees the same background load); throughput with many closed-loop clients for
a fixed time, in client processes of their own so the client's interpreter does not cap the
server's rate.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import platform
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from gateway.manifest import manifest_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
"""gRPC channel arguments giving each client its own connection (no shared subchannel), so
connections spread over the gateway's worker processes."""


def family_subset(repository: Path, family: str, out: Path) -> Path:
    """A repository holding only ``family`` (links), so nothing else loads or competes."""
    out.mkdir()
    (out / f"{family}.manifest.json").symlink_to(manifest_path(repository, family))
    for variant_dir in repository.glob(f"{family}__*"):
        (out / variant_dir.name).symlink_to(variant_dir)
    return out


def sample_request(
    task: str, seed: int = 0, image_px: int = 224
) -> tuple[str, str, np.ndarray, list[Any]]:
    """(input name, datatype, wire tensor, task items) for one request of ``task``.

    Images are PNGs of ``image_px`` square (the size the family's graph takes, so the
    request is one a client would send it).
    """
    rng = np.random.default_rng(seed)
    if task == "image-labels":
        pixels = rng.integers(0, 256, (image_px, image_px, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        data = buffer.getvalue()
        wire = np.empty(1, dtype=object)
        wire[0] = data
        return "image", "BYTES", wire, [data]
    if task == "audio-text":
        t = np.arange(16000) / 16000
        wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        return "audio", "FP32", wave[None, :], [wave]
    text = "the cat sat on the mat"
    wire = np.empty(1, dtype=object)
    wire[0] = text.encode()
    return "text", "BYTES", wire, [text]


def percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds, and the sample count."""
    p50, p99 = np.percentile(np.asarray(samples_s) * 1000, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "requests": len(samples_s)}


def interleaved(calls: dict[str, Callable[[], None]], requests: int, warmup: int = 20) -> dict:
    """Latency of each path, one request at a time, the paths taking turns.

    Taking turns exposes every path to the same background load, which on a shared machine
    moves more than the differences being measured. The order is shuffled every round
    (seeded): a call into a process that has just idled while others ran pays its wake-up,
    and in a fixed order the same paths would always pay it.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {label: [] for label in calls}
    order = list(calls)
    shuffle = random.Random(0).shuffle
    for _ in range(requests):
        shuffle(order)
        for label in order:
            start = time.perf_counter()
            calls[label]()
            samples[label].append(time.perf_counter() - start)
    return {label: percentiles_ms(s) for label, s in samples.items()}


def throughput(
    make_call: Callable[[], Callable[[], None]], clients: int, duration_s: float
) -> float:
    """Requests per second with ``clients`` threads of this process calling in a loop."""
    calls = [make_call() for _ in range(clients)]
    counts = [0] * clients
    stop = threading.Event()
    barrier = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        barrier.wait()
        while not stop.is_set():
            calls[i]()
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    time.sleep(duration_s)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - start)


@dataclass(frozen=True)
class WireCall:
    """One stock-tritonclient request, described so a client process can rebuild it."""

    protocol: str
    url: str
    model: str
    input_name: str
    datatype: str
    tensor: np.ndarray
    parameters: dict[str, Any] | None = None

    def client(self) -> Callable[[], None]:
        """A client of its own (own connection) and the call it makes."""
        lib: Any = grpcclient if self.protocol == "grpc" else httpclient
        if self.protocol == "grpc":
            client = grpcclient.InferenceServerClient(self.url, channel_args=OWN_CONNECTION)
        else:
            client = httpclient.InferenceServerClient(self.url, network_timeout=120)
        tensor = lib.InferInput(self.input_name, list(self.tensor.shape), self.datatype)
        tensor.set_data_from_numpy(self.tensor)
        parameters = self.parameters

        def call() -> None:
            client.infer(self.model, [tensor], parameters=parameters)

        return call


def _client_process(
    call: WireCall, threads: int, start_at: float, duration_s: float, out: Any
) -> None:
    counts = [0] * threads
    end_at = start_at + duration_s

    def loop(i: int) -> None:
        # Made in its own thread: the HTTP client's greenlets belong to the thread that made
        # them. Connected and warm before the clock starts.
        client = call.client()
        client()
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < end_at:
            client()
            counts[i] += 1

    pool = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put(sum(counts))


def wire_throughput(call: WireCall, clients: int, duration_s: float, processes: int = 2) -> float:
    """Requests per second of ``clients`` closed-loop clients over ``processes`` processes."""
    context = multiprocessing.get_context("spawn")
    out = context.SimpleQueue()
    start_at = time.time() + 3.0  # every process connected and warm by then
    per = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    workers = [
        context.Process(target=_client_process, args=(call, n, start_at, duration_s, out))
        for n in per
        if n
    ]
    for w in workers:
        w.start()
    total = sum(out.get() for _ in workers)
    for w in workers:
        w.join()
    return total / duration_s


def start_gateway(
    repository: Path, *serve_args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int, int]:
    """``gateway serve`` on free ports with ``serve_args`` added; returns it and its ports."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    environ.update(GATEWAY_LOG_LEVEL="warning", GATEWAY_RELOAD_INTERVAL_S="0")
    environ.update(env or {})
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(repository)]
    command += [*serve_args, "--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environ, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"the gateway exited with {proc.wait()} before listening")
    ready = json.loads(line)
    return proc, int(ready["http_port"]), int(ready["grpc_port"])


def machine() -> str:
    """The machine in words, with its load average now."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load}"


def command_line(script: str, args: Sequence[str]) -> str:
    """The command that reproduces this run of ``bench/<script>``."""
    return " ".join([f".venv/bin/python bench/{script}", *args])


def write_results(stem: str, result: dict[str, Any], markdown: str) -> None:
    """``bench/results/<stem>.json`` and ``.md``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown)
