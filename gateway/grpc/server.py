"""The grpc.aio server hosting :class:`InferenceServicer`."""

from __future__ import annotations

import grpc
from tritonclient.grpc import service_pb2_grpc

from gateway.dataplane import DataPlane
from gateway.grpc.servicer import InferenceServicer


class PortInUseError(OSError):
    """A server could not bind its address."""


async def start_grpc_server(
    dataplane: DataPlane, host: str, port: int, max_message_bytes: int, reuse_port: bool = False
) -> tuple[grpc.aio.Server, int]:
    """Start serving the KServe v2 gRPC API on ``host:port``.

    Args:
        dataplane: What the service calls.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        max_message_bytes: Largest request message; gRPC answers RESOURCE_EXHAUSTED above it.
        reuse_port: Share the port with the gateway's other worker processes.

    Returns:
        The running server and the port it bound.

    Raises:
        PortInUseError: The address could not be bound.
    """
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # Only the gateway's own workers share a port; anything else on it must fail.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(dataplane), server
    )
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise PortInUseError(f"cannot bind gRPC to {host}:{port}: {exc}") from exc
    if bound == 0:
        raise PortInUseError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, bound
