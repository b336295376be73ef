"""Gateway overhead: one variant served through the gateway vs called in-process, in one run.

The in-process baseline runs the same task code (decoding, pre/post-processing) on an ONNX
Runtime session with the same thread settings the gateway's embedded backend uses, so the
difference is what the gateway adds: protocol, (de)serialisation, routing, the hop between
task thread and backend, batching queues. Latency is measured with one request at a time;
throughput with N concurrent clients for a fixed time, the best N reported.

    .venv/bin/python bench/gateway_overhead.py                        # fixture repository
    .venv/bin/python bench/gateway_overhead.py --repository model_repo --model vision__int8

Without ``--repository`` a small repository is built in a temporary directory from the test
fixture (tests/support/repo_fixture.py) and its ``digits__fp32`` graph is used. Results go
to ``bench/results/gateway_overhead_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image

from gateway.manifest import load_manifest, manifest_path, split_model_name
from gateway.taskio import task_io

ROOT = Path(__file__).resolve().parents[1]
DIRECT = "direct in-process"
RESULTS = ROOT / "bench" / "results"


def sample_request(task: str, seed: int = 0) -> tuple[str, str, np.ndarray, list[Any]]:
    """(input name, datatype, wire tensor, task items) for one request of ``task``."""
    rng = np.random.default_rng(seed)
    if task == "image-labels":
        pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
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
    p50, p99 = np.percentile(np.asarray(samples_s) * 1000, [50, 99])
    return {"p50_ms": float(p50), "p99_ms": float(p99), "requests": len(samples_s)}


def interleaved(calls: dict[str, Callable[[], None]], requests: int, warmup: int = 20) -> dict:
    """Latency of each path, one request at a time, the paths taking turns.

    Taking turns exposes every path to the same background load, which on a shared machine
    moves more than the differences being measured.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples: dict[str, list[float]] = {label: [] for label in calls}
    for _ in range(requests):
        for label, call in calls.items():
            start = time.perf_counter()
            call()
            samples[label].append(time.perf_counter() - start)
    return {label: percentiles_ms(s) for label, s in samples.items()}


def throughput(
    make_call: Callable[[], Callable[[], None]], clients: int, duration_s: float
) -> float:
    """Requests per second with ``clients`` threads calling as fast as they can."""
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


def start_gateway(repository: Path, *serve_args: str) -> tuple[subprocess.Popen[str], int, int]:
    """``gateway serve`` on free ports with ``serve_args`` added; returns it and its ports."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(GATEWAY_LOG_LEVEL="warning", GATEWAY_RELOAD_INTERVAL_S="0")
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(repository)]
    command += [*serve_args, "--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, int(ready["http_port"]), int(ready["grpc_port"])


def direct_runner(graph: Path, intra_op_threads: int) -> Callable[[Any], Any]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Any) -> Any:
        return dict(zip(names, session.run(names, dict(inputs)), strict=True))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="a built repository (default: fixture)")
    parser.add_argument("--model", default="digits__fp32", help="pinned variant to measure")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per path")
    parser.add_argument("--duration-s", type=float, default=4.0, help="per throughput point")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository
        if repository is None:
            sys.path.insert(0, str(ROOT))
            from tests.support.repo_fixture import build_repository

            repository = build_repository(Path(tmp))
        run(repository.resolve(), args)


def command_line(args: argparse.Namespace, script: str = "gateway_overhead.py") -> str:
    """The command that reproduces this run of ``bench/<script>``."""
    words = [f".venv/bin/python bench/{script}", f"--model {args.model}"]
    if args.repository is not None:
        words.append(f"--repository {args.repository}")
    words.append(f"--requests {args.requests} --duration-s {args.duration_s:g}")
    words.append("--clients " + " ".join(str(c) for c in args.clients))
    return " ".join(words)


def run(repository: Path, args: argparse.Namespace) -> None:
    family, variant = split_model_name(args.model)
    if variant is None:
        raise SystemExit("--model must name a variant, e.g. digits__fp32")
    manifest = load_manifest(manifest_path(repository, family))
    version_dir = repository / args.model / "1"
    io_ = task_io(manifest.task, version_dir)
    name, datatype, wire, items = sample_request(manifest.task)
    options = io_.options({})
    graph_run = direct_runner(version_dir / "model.onnx", intra_op_threads=1)

    proc, http_port, grpc_port = start_gateway(repository)
    try:

        def direct_call() -> Callable[[], None]:
            return lambda: io_.run(items, graph_run, options) and None

        def grpc_call(model: str) -> Callable[[], None]:
            client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
            tensor = grpcclient.InferInput(name, list(wire.shape), datatype)
            tensor.set_data_from_numpy(wire)
            return lambda: client.infer(model, [tensor]) and None

        def http_call(model: str) -> Callable[[], None]:
            client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
            tensor = httpclient.InferInput(name, list(wire.shape), datatype)
            tensor.set_data_from_numpy(wire)
            return lambda: client.infer(model, [tensor]) and None

        paths: dict[str, Callable[[], Callable[[], None]]] = {
            DIRECT: direct_call,
            "gateway gRPC, pinned": lambda: grpc_call(args.model),
            "gateway gRPC, routed": lambda: grpc_call(family),
            "gateway HTTP, pinned": lambda: http_call(args.model),
        }
        print(f"latency: {args.requests} requests per path, paths taking turns")
        latency = interleaved({label: make() for label, make in paths.items()}, args.requests)
        results: dict[str, Any] = {}
        for label, make in paths.items():
            print(f"throughput: {label}")
            results[label] = {
                "latency": latency[label],
                "throughput_rps": {n: throughput(make, n, args.duration_s) for n in args.clients},
            }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    report(args, manifest.task, results)


def report(args: argparse.Namespace, task: str, results: dict[str, Any]) -> None:
    base = results[DIRECT]["latency"]
    base_rps = max(results[DIRECT]["throughput_rps"].values())
    rows = [(label, r["latency"], r["throughput_rps"]) for label, r in results.items()]
    table = [
        "| path | p50 ms | p99 ms | max req/s (clients) "
        "| p50 × direct | p99 × direct | req/s × direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    ratios = {}
    for label, latency, rps in rows:
        best_n = max(rps, key=rps.get)
        ratio = {
            "p50": latency["p50_ms"] / base["p50_ms"],
            "p99": latency["p99_ms"] / base["p99_ms"],
            "throughput": rps[best_n] / base_rps,
        }
        ratios[label] = ratio
        table.append(
            f"| {label} | {latency['p50_ms']:.2f} | {latency['p99_ms']:.2f} | "
            f"{rps[best_n]:.0f} ({best_n}) | {ratio['p50']:.2f} | {ratio['p99']:.2f} | "
            f"{ratio['throughput']:.2f} |"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load} at the end"
    result = {
        "model": args.model,
        "task": task,
        "machine": machine,
        "requests": args.requests,
        "duration_s_per_point": args.duration_s,
        "clients": args.clients,
        "paths": results,
        "ratios_vs_direct": ratios,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"gateway_overhead_{args.model}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = "\n".join(
        [
            "# Gateway overhead",
            "",
            f"Model `{args.model}` ({task}), one request = one item; {machine}; client, "
            "gateway and baseline share the machine. Latency: "
            f"{args.requests} sequential requests per path after warm-up, the paths taking "
            "turns. Throughput: best of "
            f"{args.clients} concurrent clients, {args.duration_s:g} s each.",
            "",
            *table,
            "",
            f"Produced by `{command_line(args)}`.",
            "",
        ]
    )
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)
    for label, ratio in ratios.items():
        print(
            f"{label}: p50 x{ratio['p50']:.2f}, p99 x{ratio['p99']:.2f}, "
            f"throughput x{ratio['throughput']:.2f} vs direct"
        )


if __name__ == "__main__":
    main()
