"""Gateway overhead in front of Triton: the gateway on Triton vs calling Triton directly.

One real Triton server (the ``tritonserver`` of nvidia-pytriton, python-backend flavour,
one instance of the model) serves one variant. Every path uses the same client library
(``tritonclient``) and ends in the same Triton model:

- ``Triton direct, tensors``: the graph's input tensors straight to Triton (gRPC).
- ``Triton direct + task code``: the client runs the task code itself (decode, resize,
  normalise; top-k) around a direct Triton call: the same work the gateway does for it.
- ``gateway → Triton, gRPC/HTTP``: task-level requests to the gateway (``backend: triton``),
  pinned to the variant or routed by family.

Latency: one request at a time, the paths taking turns; throughput: N concurrent clients
for a fixed time, the best N reported; all in one run.

    .venv/bin/python bench/triton_overhead.py                         # fixture repository
    .venv/bin/python bench/triton_overhead.py --repository model_repo --model digits__int8

Without ``--repository`` a small repository is built in a temporary directory from the test
fixture (tests/support/repo_fixture.py) and its ``digits__fp32`` graph is used. Results go
to ``bench/results/triton_overhead_<model>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from common import (
    command_line,
    family_subset,
    interleaved,
    sample_request,
    start_gateway,
    throughput,
)
from tritonclient.utils import np_to_triton_dtype

from builders.triton.flavour import write_python_flavour
from builders.triton.server import TritonServer
from gateway.manifest import load_manifest, manifest_path, split_model_name
from gateway.taskio import task_io

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DIRECT = "Triton direct, tensors"
DIRECT_TASK = "Triton direct + task code"


def direct_graph_runner(url: str, model: str) -> Callable[[Mapping[str, np.ndarray]], Any]:
    """Run the graph on Triton with the tritonclient gRPC client, as a task's RunGraph."""
    client = grpcclient.InferenceServerClient(url)

    def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = []
        for name, array in inputs.items():
            tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        result = client.infer(model, tensors)
        return {o.name: result.as_numpy(o.name) for o in result.get_response().outputs}

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, help="a built repository (default: fixture)")
    parser.add_argument("--model", default="digits__fp32", help="variant to measure")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests per path")
    parser.add_argument("--duration-s", type=float, default=4.0, help="per throughput point")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        repository = args.repository
        if repository is None:
            sys.path.insert(0, str(ROOT))
            from tests.support.repo_fixture import build_repository

            repository = build_repository(Path(tmp) / "fixture")
        run(repository.resolve(), Path(tmp), args)


def run(repository: Path, workdir: Path, args: argparse.Namespace) -> None:
    family, variant = split_model_name(args.model)
    if variant is None:
        raise SystemExit("--model must name a variant, e.g. digits__fp32")
    manifest = load_manifest(manifest_path(repository, family))
    io_ = task_io(manifest.task, repository / args.model / "1")
    name, datatype, wire, items = sample_request(manifest.task)
    options = io_.options({})

    served = family_subset(repository, family, workdir / "repository")
    flavour = workdir / "flavour"
    write_python_flavour(served, flavour)
    with TritonServer(flavour, explicit=True, load_models=(args.model,)) as triton:
        graph_run = direct_graph_runner(triton.grpc_url, args.model)
        # The tensors the task code sends for this request: what the direct path sends too.
        captured: list[Mapping[str, np.ndarray]] = []

        def capture(inputs: Mapping[str, np.ndarray]) -> Any:
            captured.append(dict(inputs))
            return graph_run(inputs)

        io_.run(items, capture, options)
        graph_inputs = captured[0]

        metrics_url = f"http://127.0.0.1:{triton.metrics_port}/metrics"
        triton_args = ["--backend", "triton", "--triton-url", triton.grpc_url]
        triton_args += ["--triton-metrics-url", metrics_url]
        proc, http_port, grpc_port = start_gateway(served, *triton_args)
        try:
            results = measure(
                args,
                triton,
                graph_inputs,
                graph_run,
                io_,
                items,
                options,
                (name, datatype, wire),
                family,
                http_port,
                grpc_port,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    report(args, manifest.task, results)


def measure(
    args: argparse.Namespace,
    triton: TritonServer,
    graph_inputs: Mapping[str, np.ndarray],
    graph_run: Callable[[Mapping[str, np.ndarray]], Any],
    io_: Any,
    items: list[Any],
    options: Any,
    request: tuple[str, str, np.ndarray],
    family: str,
    http_port: int,
    grpc_port: int,
) -> dict[str, Any]:
    name, datatype, wire = request

    def direct_call() -> Callable[[], None]:
        client = grpcclient.InferenceServerClient(triton.grpc_url)
        tensors = []
        for key, array in graph_inputs.items():
            tensor = grpcclient.InferInput(key, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array))
            tensors.append(tensor)
        return lambda: client.infer(args.model, tensors) and None

    def direct_task_call() -> Callable[[], None]:
        runner = direct_graph_runner(triton.grpc_url, args.model)
        return lambda: io_.run(items, runner, options) and None

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
        DIRECT_TASK: direct_task_call,
        "gateway → Triton, gRPC, pinned": lambda: grpc_call(args.model),
        "gateway → Triton, gRPC, routed": lambda: grpc_call(family),
        "gateway → Triton, HTTP, pinned": lambda: http_call(args.model),
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
    return results


def report(args: argparse.Namespace, task: str, results: dict[str, Any]) -> None:
    table = [
        "| path | p50 ms | p99 ms | max req/s (clients) | p50 added ms | p99 added ms "
        "| req/s × direct |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    comparisons: dict[str, dict[str, Any]] = {}
    for baseline in (DIRECT, DIRECT_TASK):
        base = results[baseline]["latency"]
        base_rps = max(results[baseline]["throughput_rps"].values())
        comparisons[baseline] = {
            label: {
                "p50_added_ms": r["latency"]["p50_ms"] - base["p50_ms"],
                "p99_added_ms": r["latency"]["p99_ms"] - base["p99_ms"],
                "throughput_ratio": max(r["throughput_rps"].values()) / base_rps,
            }
            for label, r in results.items()
        }
    for label, r in results.items():
        rps = r["throughput_rps"]
        best_n = max(rps, key=rps.get)
        added = comparisons[DIRECT][label]
        table.append(
            f"| {label} | {r['latency']['p50_ms']:.2f} | {r['latency']['p99_ms']:.2f} | "
            f"{rps[best_n]:.0f} ({best_n}) | {added['p50_added_ms']:+.2f} | "
            f"{added['p99_added_ms']:+.2f} | {added['throughput_ratio']:.2f} |"
        )
    task_rows = [
        "| path | p50 added ms | p99 added ms | req/s × direct + task code |",
        "|---|---:|---:|---:|",
    ]
    for label, added in comparisons[DIRECT_TASK].items():
        if label.startswith("gateway"):
            task_rows.append(
                f"| {label} | {added['p50_added_ms']:+.2f} | {added['p99_added_ms']:+.2f} | "
                f"{added['throughput_ratio']:.2f} |"
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
        "against": comparisons,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"triton_overhead_{args.model}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    words = [f"--model {args.model}"]
    if args.repository is not None:
        words.append(f"--repository {args.repository}")
    words.append(f"--requests {args.requests} --duration-s {args.duration_s:g}")
    words.append("--clients " + " ".join(str(c) for c in args.clients))
    command = command_line("triton_overhead.py", words)
    markdown = "\n".join(
        [
            "# Gateway overhead in front of Triton",
            "",
            f"Model `{args.model}` ({task}), one request = one item, served by tritonserver "
            f"2.51 (python backend running ONNX Runtime, one instance); {machine}; clients, "
            "gateway and Triton share the machine. Latency: "
            f"{args.requests} sequential requests per path after warm-up, the paths taking "
            f"turns. Throughput: best of {args.clients} concurrent clients, "
            f"{args.duration_s:g} s each. Added latency and the throughput ratio are against "
            "calling Triton directly with the same client (tritonclient gRPC).",
            "",
            *table,
            "",
            "Against a client that runs the task code itself around direct Triton calls:",
            "",
            *task_rows,
            "",
            f"Produced by `{command}`.",
            "",
        ]
    )
    (RESULTS / f"{stem}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
