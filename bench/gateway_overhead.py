"""Gateway overhead: a variant through the gateway against the floors and in-process, one run.

Paths, all called with the stock ``tritonclient`` (gRPC and HTTP):

- ``floor grpc`` / ``floor http``: a bare KServe servicer and a bare HTTP handler returning a
  fixed answer (bench/floors.py): the protocol stacks alone.
- ``direct in-process``: the same task code on an ONNX Runtime session with the gateway's
  thread settings, no network: what the model itself costs.
- ``gateway grpc pinned`` / ``routed``, ``gateway http pinned``: the real gateway (one
  worker), the variant pinned by name or the family routed.
- the same with ``--workers 2`` (``..., 2 workers``).

The gateway's own cost is its latency minus the floor's and the in-process task's. Latency:
one request at a time, the wire paths taking turns (the in-process task first, alone);
throughput: closed-loop clients in two client processes, each client on its own connection,
the best of ``--clients`` reported.

    .venv/bin/python bench/gateway_overhead.py --repository model_repo --model digits__fp32
    .venv/bin/python bench/gateway_overhead.py --repository model_repo --model vision__int8

Without ``--repository`` the test fixture's repository (tests/support/repo_fixture.py) is
built in a temporary directory. Results: ``bench/results/gateway_overhead_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
from common import (
    ROOT,
    WireCall,
    command_line,
    interleaved,
    machine,
    sample_request,
    start_gateway,
    throughput,
    wire_throughput,
    write_results,
)

from gateway.layout import graph_path
from gateway.manifest import load_manifest, manifest_path, split_model_name
from gateway.taskio import task_io

DIRECT = "direct in-process"
FLOOR_GRPC = "floor grpc"
FLOOR_HTTP = "floor http"
PINNED = "gateway grpc pinned"
ROUTED = "gateway grpc routed"
HTTP_PINNED = "gateway http pinned"
TWO = ", 2 workers"


def direct_runner(graph: Path, intra_op_threads: int) -> Callable[[Any], Any]:
    """A RunGraph over a session set up as the embedded backend sets up its own."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(inputs: Any) -> Any:
        return dict(zip(names, session.run(names, dict(inputs)), strict=True))

    return run


def start_floors() -> tuple[subprocess.Popen[str], int, int]:
    """bench/floors.py in a process of its own; returns it and its gRPC and HTTP ports."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "floors.py")], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())
    return proc, int(ports["grpc_port"]), int(ports["http_port"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="a built repository (default: fixture)")
    parser.add_argument("--model", default="digits__fp32", help="pinned variant to measure")
    parser.add_argument("--requests", type=int, default=500, help="sequential requests per path")
    parser.add_argument("--duration-s", type=float, default=3.0, help="per throughput point")
    parser.add_argument("--clients", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository
        if repository is None:
            sys.path.insert(0, str(ROOT))
            from tests.support.repo_fixture import build_repository

            repository = build_repository(Path(tmp))
        run(repository.resolve(), args)


def run(repository: Path, args: argparse.Namespace) -> None:
    family, variant = split_model_name(args.model)
    if variant is None:
        raise SystemExit("--model must name a variant, e.g. digits__fp32")
    manifest = load_manifest(manifest_path(repository, family))
    entry = manifest.variant(variant)
    io_ = task_io(manifest.task, graph_path(repository, args.model, entry.runtime).parent)
    settings = getattr(getattr(io_, "task", None), "settings", None)
    image_px = getattr(settings, "resize_shorter_px", None) or getattr(settings, "size_px", 224)
    name, datatype, wire, items = sample_request(manifest.task, image_px=image_px)
    options = io_.options({})
    graph_run = direct_runner(graph_path(repository, args.model, entry.runtime), 1)

    # The task alone, before any client exists: a client's background threads in this
    # process would otherwise slow the in-process baseline and flatter the gateway.
    direct = lambda: io_.run(items, graph_run, options) and None  # noqa: E731
    print(f"latency: {args.requests} in-process task runs", flush=True)
    latency = interleaved({DIRECT: direct}, args.requests)
    rates: dict[str, dict[int, float]] = {
        DIRECT: {1: throughput(lambda: direct, 1, args.duration_s)}
    }
    processes: list[subprocess.Popen[str]] = []
    try:
        floors, floor_grpc, floor_http = start_floors()
        processes.append(floors)
        one, http_1, grpc_1 = start_gateway(repository)
        processes.append(one)
        two, http_2, grpc_2 = start_gateway(repository, "--workers", "2")
        processes.append(two)

        def call(protocol: str, port: int, model: str) -> WireCall:
            return WireCall(protocol, f"127.0.0.1:{port}", model, name, datatype, wire)

        wire_paths = {
            FLOOR_GRPC: call("grpc", floor_grpc, args.model),
            FLOOR_HTTP: call("http", floor_http, args.model),
            PINNED: call("grpc", grpc_1, args.model),
            ROUTED: call("grpc", grpc_1, family),
            HTTP_PINNED: call("http", http_1, args.model),
            PINNED + TWO: call("grpc", grpc_2, args.model),
            ROUTED + TWO: call("grpc", grpc_2, family),
        }
        calls = {label: c.client() for label, c in wire_paths.items()}
        print(f"latency: {args.requests} requests per path, paths taking turns", flush=True)
        latency |= interleaved(calls, args.requests)
        for label, wire_call in wire_paths.items():
            print(f"throughput: {label}", flush=True)
            rates[label] = {n: wire_throughput(wire_call, n, args.duration_s) for n in args.clients}
    finally:
        for proc in processes:
            proc.send_signal(signal.SIGTERM)
        for proc in processes:
            proc.wait(timeout=60)
    report(args, manifest.task, latency, rates)


def report(
    args: argparse.Namespace,
    task: str,
    latency: dict[str, dict[str, float]],
    rates: dict[str, dict[int, float]],
) -> None:
    paths = {
        label: {
            "p50_ms": latency[label]["p50_ms"],
            "p99_ms": latency[label]["p99_ms"],
            "max_per_s": max(rates[label].values()),
            "per_s_by_clients": rates[label],
        }
        for label in latency
    }
    task_p50, task_p99 = paths[DIRECT]["p50_ms"], paths[DIRECT]["p99_ms"]

    def added(label: str, floor: str) -> dict[str, float]:
        return {
            "p50_ms": paths[label]["p50_ms"] - paths[floor]["p50_ms"] - task_p50,
            "p99_ms": paths[label]["p99_ms"] - paths[floor]["p99_ms"] - task_p99,
            "throughput_vs_floor": paths[label]["max_per_s"] / paths[floor]["max_per_s"],
        }

    gateway = [label for label in paths if label.startswith("gateway")]
    overhead = {
        label: added(label, FLOOR_HTTP if " http " in label else FLOOR_GRPC) for label in gateway
    }
    scaling = {
        label: paths[label + TWO]["max_per_s"] / paths[label]["max_per_s"]
        for label in (PINNED, ROUTED)
    }
    header = (
        "| path | p50 ms | p99 ms | max req/s | gateway adds p50 ms | adds p99 ms | req/s × floor |"
    )
    table = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for label, numbers in paths.items():
        extra = overhead.get(label)
        cells = (
            f"{extra['p50_ms']:+.2f} | {extra['p99_ms']:+.2f} | {extra['throughput_vs_floor']:.2f}"
            if extra
            else " | | "
        )
        table.append(
            f"| {label} | {numbers['p50_ms']:.2f} | {numbers['p99_ms']:.2f} | "
            f"{numbers['max_per_s']:.0f} | {cells} |"
        )
    words = [f"--model {args.model}", f"--requests {args.requests}"]
    if args.repository is not None:
        words.insert(0, f"--repository {args.repository}")
    words.append(f"--duration-s {args.duration_s:g} --clients " + " ".join(map(str, args.clients)))
    command = command_line("gateway_overhead.py", words)
    where = machine()
    result = {
        "model": args.model,
        "task": task,
        "machine": where,
        "command": command,
        "paths": paths,
        "gateway_adds": overhead,
        "workers_2_vs_1": scaling,
    }
    markdown = "\n".join(
        [
            f"# Gateway overhead: `{args.model}`",
            "",
            f"{task}, one item per request; {where} at the end; clients, gateway and floors "
            f"share the machine. Latency: {args.requests} sequential requests per path after "
            "warm-up, the wire paths taking turns in a shuffled order (the in-process task "
            "measured first, alone). Throughput: the best of "
            f"{args.clients} closed-loop clients (two client processes, a connection each), "
            f'{args.duration_s:g} s each. "Gateway adds" is its latency minus the floor\'s '
            "and the in-process task's.",
            "",
            *table,
            "",
            "Two workers against one: "
            + ", ".join(f"{label} ×{ratio:.2f}" for label, ratio in scaling.items())
            + ".",
            "",
            f"Produced by `{command}`.",
            "",
        ]
    )
    write_results(f"gateway_overhead_{args.model}", result, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
