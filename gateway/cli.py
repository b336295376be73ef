"""``gateway serve``: both KServe v2 servers in one process, stopped cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.routing.shared import SharedTable
from gateway.service import Gateway
from gateway.workers import Supervisor


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="KServe v2 gateway that routes each request to the variant fitting its "
        "budgets. Every option can also be set as GATEWAY_<NAME> in the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve a model repository over gRPC and HTTP")
    serve.add_argument("--repository", type=Path, help="model repository (default model_repo)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--http-port", type=int, help="HTTP port (default 8000; 0 = any free)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (default 8001; 0 = any free)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--workers", type=int, help="gateway processes sharing the ports (default 1)"
    )
    serve.add_argument(
        "--backend", choices=["embedded", "triton"], help="where graphs run (default embedded)"
    )
    serve.add_argument(
        "--triton-url",
        action="append",
        dest="triton_urls",
        metavar="HOST:PORT",
        help="gRPC address of a Triton server; repeat for replicas",
    )
    serve.add_argument(
        "--triton-metrics-url",
        action="append",
        dest="triton_metrics_urls",
        metavar="URL",
        help="metrics URL of each Triton server, in the same order",
    )
    serve.add_argument(
        "--triton-gpu-memory-budget-mb",
        type=float,
        help="GPU memory (MiB) per Triton server for variants loaded on demand",
    )
    return parser


async def serve_until_signalled(
    settings: GatewaySettings,
    table: SharedTable | None = None,
    on_listening: Callable[[Gateway], object] | None = None,
) -> None:
    """Run one gateway until SIGINT/SIGTERM, then drain it.

    Args:
        settings: The gateway's settings.
        table: Live load shared with other worker processes (None: a single process).
        on_listening: Called once both servers listen.
    """
    gateway = Gateway(settings, table=table)
    await gateway.start()
    # What start-up allocated (sessions, manifests, modules) lives as long as the process:
    # frozen out of the collector's sight, the collections requests trigger skip it.
    gc.freeze()
    if on_listening is not None:
        on_listening(gateway)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


def _announce(settings: GatewaySettings, http_port: int, grpc_port: int) -> None:
    # One machine-readable line, so scripts starting the gateway on port 0 learn its ports.
    line = {"event": "listening", "host": settings.host, "http_port": http_port}
    print(json.dumps(line | {"grpc_port": grpc_port}), flush=True)


def configure_logging(settings: GatewaySettings) -> None:
    """Log to stderr at the configured level."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {
        key: value
        for key, value in {
            "repository": args.repository,
            "host": args.host,
            "http_port": args.http_port,
            "grpc_port": args.grpc_port,
            "log_level": args.log_level,
            "workers": args.workers,
            "backend": args.backend,
            "triton_urls": args.triton_urls,
            "triton_metrics_urls": args.triton_metrics_urls,
            "triton_gpu_memory_budget_mb": args.triton_gpu_memory_budget_mb,
        }.items()
        if value is not None
    }
    try:
        settings = GatewaySettings(**overrides)
    except ValidationError as exc:
        print(f"gateway: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if not settings.repository.is_dir():
        print(f"gateway: repository {settings.repository} is not a directory", file=sys.stderr)
        return 2
    try:
        if settings.workers > 1:
            return Supervisor(settings, lambda h, g: _announce(settings, h, g)).run()
        asyncio.run(
            serve_until_signalled(
                settings, on_listening=lambda gw: _announce(settings, gw.http_port, gw.grpc_port)
            )
        )
    except (OSError, ValueError) as exc:  # a port in use; a key or TLS file that does not load
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
