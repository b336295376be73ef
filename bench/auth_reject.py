"""Time to reject an unauthenticated request, against the cheapest open call, in one run.

A gateway with API keys on serves the fixture repository. On each protocol, one request at a
time and the paths taking turns, the bench times:

- the floor: the open liveness call (``ServerLive`` / ``GET /v2/health/live``), the
  cheapest round trip through the same server, client and connection;
- an inference request with no key, and one with an unknown key (hashed and compared
  against every stored digest): both answered UNAUTHENTICATED / 401;
- for scale, the same inference request with a valid key, served.

Raw gRPC stubs and httpx are the clients, the same for every path, so the differences are
the server's. The inference request carries a 224x224 PNG (about 150 kB), as a real client
would send it.

    .venv/bin/python bench/auth_reject.py [--requests 2000] [--keys 50]

Results: ``bench/results/auth_reject.{json,md}``.
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
from PIL import Image
from tritonclient.grpc import service_pb2, service_pb2_grpc

from gateway.auth import hash_key, new_key

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_overhead import interleaved  # noqa: E402 - the same timing, taking turns

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODEL = "digits"


def png_224() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_keys(path: Path, valid: str, extra: int) -> None:
    """A key file with the valid key plus ``extra`` others, as a deployment would hold."""
    entries = [{"id": "bench", "sha256": hash_key(valid), "scopes": ["inference"]}]
    entries += [
        {"id": f"other-{i}", "sha256": hash_key(new_key()), "scopes": ["inference"]}
        for i in range(extra)
    ]
    path.write_text(json.dumps({"keys": entries}), encoding="utf-8")


def start_gateway(repository: Path, keys: Path) -> tuple[subprocess.Popen[str], int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_RELOAD_INTERVAL_S="0",
        GATEWAY_AUTH_KEYS_FILE=str(keys),
    )
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(repository)]
    command += ["--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, int(ready["http_port"]), int(ready["grpc_port"])


def grpc_paths(port: int, image: bytes, key: str) -> dict[str, Callable[[], None]]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="image", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(len(image).to_bytes(4, "little") + image)

    def live() -> None:
        assert stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=10).live

    def infer(metadata: list[tuple[str, str]], expect: grpc.StatusCode) -> Callable[[], None]:
        def call() -> None:
            try:
                stub.ModelInfer(request, metadata=metadata, timeout=10)
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            assert code == expect, code

        return call

    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    return {
        "gRPC ServerLive (open): floor": live,
        "gRPC ModelInfer, no key: rejected": infer([], unauthenticated),
        "gRPC ModelInfer, unknown key: rejected": infer(
            [("authorization", f"Bearer {new_key()}")], unauthenticated
        ),
        "gRPC ModelInfer, valid key: served": infer(
            [("authorization", f"Bearer {key}")], grpc.StatusCode.OK
        ),
    }


def http_paths(port: int, image: bytes, key: str) -> dict[str, Callable[[], None]]:
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "datatype": "BYTES",
                    "shape": [1],
                    "parameters": {"binary_data_size": len(image) + 4},
                }
            ]
        }
    ).encode()
    body = head + len(image).to_bytes(4, "little") + image
    base = {"Inference-Header-Content-Length": str(len(head))}

    def live() -> None:
        assert client.get("/v2/health/live").status_code == 200

    def infer(headers: dict[str, str], expect: int) -> Callable[[], None]:
        sent = {**base, **headers}

        def call() -> None:
            status = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=sent)
            assert status.status_code == expect, status.text

        return call

    return {
        "HTTP GET /v2/health/live (open): floor": live,
        "HTTP infer, no key: rejected": infer({}, 401),
        "HTTP infer, unknown key: rejected": infer({"x-api-key": new_key()}, 401),
        "HTTP infer, valid key: served": infer({"authorization": f"Bearer {key}"}, 200),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential requests per path")
    parser.add_argument("--keys", type=int, default=50, help="other keys in the key file")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.support.repo_fixture import build_repository

    key = new_key()
    image = png_224()
    with tempfile.TemporaryDirectory() as tmp:
        repository = build_repository(Path(tmp))
        keys = Path(tmp) / "keys.json"
        write_keys(keys, key, args.keys)
        proc, http_port, grpc_port = start_gateway(repository, keys)
        try:
            results = {}
            for paths in (grpc_paths(grpc_port, image, key), http_paths(http_port, image, key)):
                results.update(interleaved(paths, args.requests, warmup=50))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    report(args, results, len(image))


def report(args: argparse.Namespace, results: dict[str, Any], image_bytes: int) -> None:
    floors = {
        p: results[next(k for k in results if k.startswith(p) and "floor" in k)]
        for p in ("gRPC", "HTTP")
    }
    table = ["| path | p50 ms | p99 ms | p99 × floor |", "|---|---:|---:|---:|"]
    for label, r in results.items():
        floor = floors[label.split()[0]]
        r["p99_vs_floor"] = r["p99_ms"] / floor["p99_ms"]
        table.append(
            f"| {label} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['p99_vs_floor']:.2f} |"
        )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load average {load} at the end"
    command = f".venv/bin/python bench/auth_reject.py --requests {args.requests} --keys {args.keys}"
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "requests_per_path": args.requests,
        "keys_in_file": args.keys + 1,
        "image_bytes": image_bytes,
        "paths": results,
        "command": command,
    }
    (RESULTS / "auth_reject.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = "\n".join(
        [
            "# Time to reject an unauthenticated request",
            "",
            f"{machine}; client and gateway share the machine. {args.requests} sequential "
            f"requests per path after warm-up, the paths of a protocol taking turns; the key "
            f"file holds {args.keys + 1} keys; inference requests carry a {image_bytes} B PNG. "
            "The floor is the open liveness call on the same server and connection.",
            "",
            *table,
            "",
            f"Produced by `{command}`.",
            "",
        ]
    )
    (RESULTS / "auth_reject.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
