"""Drive a gateway with the stock ``tritonclient.grpc.aio``: open-loop replay, closed loops.

Open loop: every arrival of the trace is sent at its time whether or not earlier ones have
answered (a closed loop would slow down with the server and hide its queueing). Each
request is bounded by a client timeout, so a run always ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc.aio as aioclient
from slo_trace import Arrival
from tritonclient.utils import InferenceServerException

Item = tuple[str, str, np.ndarray]
"""One request's input: tensor name, datatype and value."""


@dataclass(frozen=True)
class Outcome:
    """What happened to one request.

    Attributes:
        arrival: The trace's arrival.
        sent_s: When it went out, seconds from the start of the trace.
        latency_s: From sending to the answer (or the error).
        status: ``OK`` or the gRPC status name.
        variant: The variant that served it (from the response), "" on error.
    """

    arrival: Arrival
    sent_s: float
    latency_s: float
    status: str
    variant: str


def _inputs(item: Item) -> list[aioclient.InferInput]:
    name, datatype, value = item
    tensor = aioclient.InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return [tensor]


def _status(exc: InferenceServerException) -> str:
    return str(exc.status() or "UNKNOWN").removeprefix("StatusCode.")


async def replay(
    url: str,
    arrivals: Sequence[Arrival],
    items: Sequence[Item],
    request: Callable[[Arrival], tuple[str, dict[str, Any] | None]],
    timeout_s: float,
) -> list[Outcome]:
    """Send every arrival at its time; ``request(arrival)`` gives (model, parameters)."""
    client = aioclient.InferenceServerClient(url)
    inputs = [_inputs(item) for item in items]
    await client.is_server_live()
    outcomes: list[Outcome] = []
    origin = time.perf_counter() + 0.5

    async def one(arrival: Arrival) -> None:
        model, parameters = request(arrival)
        sent = time.perf_counter()
        try:
            result = await client.infer(
                model, inputs[arrival.item], parameters=parameters, client_timeout=timeout_s
            )
            params = result.get_response().parameters
            status, variant = "OK", params["variant"].string_param if "variant" in params else ""
        except InferenceServerException as exc:
            status, variant = _status(exc), ""
        done = time.perf_counter()
        outcomes.append(Outcome(arrival, sent - origin, done - sent, status, variant))

    tasks = []
    for arrival in arrivals:
        delay = origin + arrival.at_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(arrival)))
    await asyncio.gather(*tasks)
    await client.close()
    return sorted(outcomes, key=lambda o: o.arrival.at_s)


async def closed_loop(
    url: str, model: str, items: Sequence[Item], concurrency: int, seconds: float
) -> float:
    """Answers per second of ``concurrency`` requests kept in flight for ``seconds``."""
    client = aioclient.InferenceServerClient(url)
    inputs = [_inputs(item) for item in items]
    await client.is_server_live()
    done = 0
    stop_at = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        nonlocal done
        i = offset
        while time.perf_counter() < stop_at:
            await client.infer(model, inputs[i % len(inputs)], client_timeout=60)
            done += 1
            i += concurrency

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    rate = done / (time.perf_counter() - start)
    await client.close()
    return rate


async def sequential_latency_s(
    url: str, model: str, items: Sequence[Item], requests: int
) -> list[float]:
    """Latencies of ``requests`` one-at-a-time requests cycling through the items."""
    client = aioclient.InferenceServerClient(url)
    inputs = [_inputs(item) for item in items]
    await client.is_server_live()
    for i in range(min(10, requests)):
        await client.infer(model, inputs[i % len(inputs)])
    samples = []
    for i in range(requests):
        start = time.perf_counter()
        await client.infer(model, inputs[i % len(inputs)], client_timeout=60)
        samples.append(time.perf_counter() - start)
    await client.close()
    return samples
