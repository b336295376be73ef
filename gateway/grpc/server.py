"""The grpc.aio server hosting :class:`InferenceServicer`."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from gateway.dataplane import DataPlane
from gateway.grpc.decoding import register_servicer
from gateway.grpc.servicer import InferenceServicer


class PortInUseError(OSError):
    """A server could not bind its address."""


ADMISSION_HEADROOM = 16
"""Calls beyond the gateway's in-flight limit that gRPC itself still lets through, so the
data plane's own shed (with its message and metrics) answers first; past that, gRPC refuses
before any Python runs, which keeps a flooded server responsive."""


async def start_grpc_server(
    dataplane: DataPlane,
    host: str,
    port: int,
    max_message_bytes: int,
    reuse_port: bool = False,
    max_concurrent_calls: int | None = None,
    *,
    credentials: grpc.ServerCredentials | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> tuple[grpc.aio.Server, int]:
    """Start serving the KServe v2 gRPC API on ``host:port``.

    Args:
        dataplane: What the service calls.
        host: Address to bind.
        port: Port to bind; 0 picks a free one.
        max_message_bytes: Largest request message; gRPC answers RESOURCE_EXHAUSTED above it.
        reuse_port: Share the port with the gateway's other worker processes.
        max_concurrent_calls: Calls served at once; more are refused RESOURCE_EXHAUSTED by
            gRPC (None: unlimited).
        credentials: TLS credentials; None serves plaintext.
        interceptors: Run before every call (the access check).

    Returns:
        The running server and the port it bound.

    Raises:
        PortInUseError: The address could not be bound.
    """
    server = grpc.aio.server(
        interceptors=list(interceptors),
        maximum_concurrent_rpcs=max_concurrent_calls,
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", -1),
            # Only the gateway's own workers share a port; anything else on it must fail.
            ("grpc.so_reuseport", 1 if reuse_port else 0),
        ],
    )
    register_servicer(InferenceServicer(dataplane), server)
    try:
        address = f"{host}:{port}"
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise PortInUseError(f"cannot bind gRPC to {host}:{port}: {exc}") from exc
    if bound == 0:
        raise PortInUseError(f"cannot bind gRPC to {host}:{port}")
    await server.start()
    return server, bound
