"""``gateway serve``: both KServe v2 servers in one process, stopped cleanly by SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config import GatewaySettings
from gateway.service import Gateway


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


async def _serve(settings: GatewaySettings) -> None:
    gateway = Gateway(settings)
    await gateway.start()
    # One machine-readable line, so scripts starting the gateway on port 0 learn its ports.
    print(
        json.dumps(
            {
                "event": "listening",
                "host": settings.host,
                "http_port": gateway.http_port,
                "grpc_port": gateway.grpc_port,
            }
        ),
        flush=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gateway.stop()


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
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not settings.repository.is_dir():
        print(f"gateway: repository {settings.repository} is not a directory", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(settings))
    except (OSError, ValueError) as exc:  # a port in use; a key or TLS file that does not load
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
