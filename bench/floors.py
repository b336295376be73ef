"""The floors: a bare KServe v2 gRPC servicer and a bare HTTP handler, fixed answers.

What a request costs with no gateway at all: the same protocol stacks the gateway uses
(``grpc.aio`` with the stock generated servicer; uvicorn with a plain ASGI app instead of the
gateway's FastAPI routes), no decoding, no routing, no model. Each answers every ModelInfer
with the same small top-k answer an image family would give. Run as its own process:

    .venv/bin/python bench/floors.py     # prints {"grpc_port": ..., "http_port": ...}
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

import grpc
import uvicorn
from tritonclient.grpc import service_pb2, service_pb2_grpc

LABELS = [b"9", b"8", b"3", b"5", b"1"]
SCORES = [0.9, 0.05, 0.03, 0.01, 0.01]


def _framed(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(x)) + x for x in items)


class FloorServicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Answers ModelInfer at once with a fixed top-k answer."""

    async def ServerLive(self, request: Any, context: Any) -> Any:  # noqa: N802
        return service_pb2.ServerLiveResponse(live=True)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        response = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1")
        response.outputs.add(name="labels", datatype="BYTES", shape=[1, 5])
        response.outputs.add(name="scores", datatype="FP32", shape=[1, 5])
        response.raw_output_contents.append(_framed(LABELS))
        response.raw_output_contents.append(struct.pack("<5f", *SCORES))
        return response


BODY = json.dumps(
    {
        "model_name": "floor",
        "model_version": "1",
        "outputs": [
            {
                "name": "labels",
                "datatype": "BYTES",
                "shape": [1, 5],
                "data": ["9", "8", "3", "5", "1"],
            },
            {"name": "scores", "datatype": "FP32", "shape": [1, 5], "data": SCORES},
        ],
    }
).encode()


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI: read the body, answer the fixed JSON (200 for anything)."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(BODY))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


async def main() -> None:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(), server)
    grpc_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(floor_app, log_level="warning", access_log=False, lifespan="off")
    http = uvicorn.Server(config)
    serving = asyncio.create_task(http.serve(sockets=[sock]))
    while not http.started:
        await asyncio.sleep(0.01)
    print(json.dumps({"grpc_port": grpc_port, "http_port": sock.getsockname()[1]}), flush=True)
    await serving
    await server.stop(0)


if __name__ == "__main__":
    asyncio.run(main())
