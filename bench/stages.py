"""Where a request's time goes inside the gateway, stage by stage, without the network.

The real data plane and converters run in this process on one variant (no servers): each
stage is timed on its own over the same request, in turns, so the figures add up to what
one request costs the gateway's CPU besides the protocol stack (which bench/floors.py
measures). Stages: the gRPC message to an InferRequest; routing and admission (the data
plane minus its task run); the task's decode/pre-processing, graph and post-processing;
the answer back to a gRPC message; and the hand-off to a worker thread and back (the pool
path against the inline one).

    .venv/bin/python bench/stages.py --repository model_repo --model digits__fp32
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common import ROOT, command_line, machine, sample_request, write_results
from prometheus_client import CollectorRegistry
from tritonclient.grpc import service_pb2

from gateway.config import GatewaySettings
from gateway.grpc import convert
from gateway.manifest import split_model_name
from gateway.service import Gateway
from gateway.tensors import to_raw


def _request(model: str, name: str, datatype: str, wire: Any) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name=model)
    message.inputs.add(name=name, datatype=datatype, shape=list(wire.shape))
    message.raw_input_contents.append(to_raw(wire))
    return message


async def _median_us(call: Callable[[], Awaitable[Any]], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
    return 1e6 * statistics.median(samples)


async def _measure_one(repository: Path, model: str, runs: int, inline: bool) -> dict[str, float]:
    """The stages with cheap tasks inline on the loop, or every task in the pool."""
    family, variant = split_model_name(model)
    settings = GatewaySettings(
        repository=repository,
        http_port=0,
        grpc_port=0,
        reload_interval_s=0,
        log_level="warning",
        inline_task_max_ms=100.0 if inline else 0.0,
    )
    gateway = Gateway(settings, registry=CollectorRegistry())
    await gateway.backend.start()
    gateway.dataplane.start()
    await gateway.registry.refresh()
    dataplane = gateway.dataplane
    family_served = gateway.registry.snapshot.families[family]
    served = family_served.variants[variant]
    assert served.io is not None
    io = served.io
    lease = await gateway.backend.acquire([served.ref], 1.0)
    runner = gateway.backend.graph_runner(lease, asyncio.get_running_loop())
    image_px = getattr(getattr(getattr(io, "task", None), "settings", None), "size_px", 224)
    name, datatype, wire, _ = sample_request(family_served.manifest.task, image_px=image_px)
    message = _request(model, name, datatype, wire)
    request = convert.infer_request(message, {}, None)
    items = io.items({t.name: t for t in request.inputs})
    options = io.options({})
    graph_s: list[float] = []

    def timed(inputs: Any, graph: str = "model") -> Any:
        start = time.perf_counter()
        out = runner(inputs, 60.0)
        graph_s.append(time.perf_counter() - start)
        return out

    async def whole() -> Any:
        return await dataplane.infer(convert.infer_request(message, {}, None))

    for _ in range(max(50, runs // 5)):  # warm, and let the variant prove it is cheap
        await whole()
    response = await whole()
    stages = {f"whole data plane ({'inline' if inline else 'pool'})": await _median_us(whole, runs)}
    if inline:

        async def decode() -> Any:
            return convert.infer_request(message, {}, None)

        async def encode() -> Any:
            return convert.infer_response(response)

        async def run_task() -> Any:
            return io.run(items, timed, options)

        stages["gRPC message to request"] = await _median_us(decode, runs)
        stages["answer to gRPC message"] = await _median_us(encode, runs)
        graph_s.clear()
        stages["task, all of it"] = await _median_us(run_task, runs)
        stages["task: inside the graph"] = 1e6 * statistics.median(graph_s)
    await gateway.stop()
    return stages


async def measure(repository: Path, model: str, runs: int) -> dict[str, float]:
    """Every stage, in microseconds (medians)."""
    stages = await _measure_one(repository, model, runs, inline=True)
    stages |= await _measure_one(repository, model, runs, inline=False)
    stages["routing and admission"] = (
        stages["whole data plane (inline)"] - stages["task, all of it"]
    )
    stages["hand-off to a worker and back"] = (
        stages["whole data plane (pool)"] - stages["whole data plane (inline)"]
    )
    stages["task: decoding, pre- and post-processing"] = (
        stages["task, all of it"] - stages["task: inside the graph"]
    )
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--model", default="digits__fp32")
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    stages = asyncio.run(measure(args.repository.resolve(), args.model, args.runs))
    shown = args.repository.resolve()
    shown = shown.relative_to(ROOT) if shown.is_relative_to(ROOT) else shown
    command = command_line(
        "stages.py",
        [f"--repository {shown}", f"--model {args.model}", f"--runs {args.runs}"],
    )
    rows = [
        "| stage | median µs |",
        "|---|---:|",
        *(f"| {k} | {v:.0f} |" for k, v in stages.items()),
    ]
    markdown = "\n".join(
        [
            f"# Where a request's time goes: `{args.model}`",
            "",
            f"{machine()}; medians of {args.runs} runs per stage, in process, no network "
            "(the protocol stacks are bench/floors.py's).",
            "",
            *rows,
            "",
            f"Produced by `{command}`.",
            "",
        ]
    )
    write_results(
        f"stages_{args.model}",
        {"model": args.model, "command": command, "stages_us": stages},
        markdown,
    )
    print(markdown)


if __name__ == "__main__":
    main()
