"""Speech latency: Whisper tiny.en through the gateway against faster-whisper, in one run.

A real 7.1 s recording (LibriVox, ``pocketsphinx-testdata``) is transcribed, one request at
a time, the paths taking turns so they share the machine's background load:

- ``gateway fp32`` / ``gateway int8``: a stock ``tritonclient`` gRPC call to ``speech__fp32``
  (``speech__int8``) of a gateway on the embedded ONNX Runtime backend, the WAV file as
  BYTES; decoding, features, both graphs and the greedy loop all inside that one request;
- ``faster-whisper float32``: the same model folder (the package's CTranslate2 tiny.en) in
  process, greedy (beam 1, temperature 0, no timestamps, no previous-text prompt: the
  decoding the gateway does), ``compute_type="float32"``;
- ``in-process fp32``: the gateway's task code on ONNX Runtime sessions without the gateway.

Thread counts are comparable: faster-whisper gets ``--threads`` CPU threads and the
gateway's ONNX Runtime sessions ``--threads`` intra-op threads (``GATEWAY_INTRA_OP_THREADS``).
The 44 s recording (all ten real recordings joined) is also sent through the gateway once,
as one request. Results: ``bench/results/speech_latency.{json,md}``.

    .venv/bin/python bench/speech_latency.py --repository model_repo --requests 15
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import tritonclient.grpc as grpcclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gateway_overhead import interleaved  # noqa: E402

from builders.zoo.speech import data  # noqa: E402
from builders.zoo.speech.evaluation import error_rates  # noqa: E402
from builders.zoo.speech.reference import reference_model, reference_transcript  # noqa: E402
from gateway.manifest import load_manifest, manifest_path  # noqa: E402
from gateway.tasks.onnx_runner import GraphSessions  # noqa: E402
from gateway.tasks.speech import WhisperTask  # noqa: E402

RESULTS = ROOT / "bench" / "results"
RECORDING = "librivox/sense_and_sensibility_01_austen_64kb-0870"


def wav_bytes(waveform: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, waveform, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=ROOT / "model_repo")
    parser.add_argument("--requests", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    manifest = load_manifest(manifest_path(args.repository, "speech"))
    variants = [v.name for v in manifest.published() if v.name in ("fp32", "int8")]
    utterance = next(u for u in data.real_recordings() if u.name == RECORDING)
    payload = wav_bytes(utterance.waveform)
    long = data.long_recording()

    reference = reference_model(args.threads)

    def faster_whisper_call() -> str:
        return reference_transcript(reference, utterance.waveform)

    fp32 = manifest.variant("fp32")
    graphs = {g: fp32.graph_path(args.repository, g) for g in manifest.graph_names()}
    runner = GraphSessions(graphs, args.threads)
    task = WhisperTask(graphs["encoder"].parent)

    proc, grpc_port = start_gateway_with_threads(args.repository, args.threads)
    texts: dict[str, str] = {}
    try:
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")

        def gateway_call(model: str, audio: bytes, label: str) -> Any:
            tensor = grpcclient.InferInput("audio", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([audio], dtype=object))

            def call() -> None:
                result = client.infer(model, [tensor], client_timeout=300)
                texts[label] = result.as_numpy("text")[0].decode()

            return call

        calls = {
            f"gateway {v}": gateway_call(f"speech__{v}", payload, f"gateway {v}") for v in variants
        }
        calls["faster-whisper float32"] = lambda: texts.__setitem__(
            "faster-whisper float32", faster_whisper_call()
        )
        calls["in-process fp32"] = lambda: texts.__setitem__(
            "in-process fp32", task.run([utterance.waveform], runner)[0]
        )
        latency = interleaved(calls, args.requests, warmup=2)
        start = time.perf_counter()
        gateway_call("speech__fp32", wav_bytes(long.waveform), "long")()
        long_s = time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(30)

    fw = latency["faster-whisper float32"]["p50_ms"]
    result = {
        "command": f"python bench/speech_latency.py --repository {args.repository.name} "
        f"--requests {args.requests} --threads {args.threads}",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}",
        "recording": {"name": RECORDING, "seconds": round(utterance.seconds, 2)},
        "threads": args.threads,
        "latency": latency,
        "ratio_gateway_fp32_vs_faster_whisper": latency["gateway fp32"]["p50_ms"] / fw,
        "ratio_gateway_int8_vs_fp32": (
            latency["gateway int8"]["p50_ms"] / latency["gateway fp32"]["p50_ms"]
            if "gateway int8" in latency
            else None
        ),
        "transcripts": texts,
        "long_recording": {
            "seconds": round(long.seconds, 2),
            "latency_s": round(long_s, 2),
            "wer": round(error_rates([long.text], [texts["long"]])["wer"], 2),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "speech_latency.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Speech latency: Whisper tiny.en, 7.1 s real recording, one request at a time",
        "",
        f"`{result['command']}` on {result['machine']}; {args.threads} thread(s) per path.",
        "",
        "| path | p50 ms | p99 ms | requests |",
        "|---|---|---|---|",
        *(
            f"| {label} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['requests']} |"
            for label, r in latency.items()
        ),
        "",
        f"gateway fp32 / faster-whisper float32: "
        f"{result['ratio_gateway_fp32_vs_faster_whisper']:.2f}x (target <= 1.5x)",
        "",
    ]
    if result["ratio_gateway_int8_vs_fp32"] is not None:
        lines.append(f"gateway int8 / gateway fp32: {result['ratio_gateway_int8_vs_fp32']:.2f}x")
        lines.append("")
    lines.append(
        f"44 s recording (ten real recordings joined), one request through the gateway: "
        f"{long_s:.1f} s, WER {result['long_recording']['wer']:.1f} %"
    )
    (RESULTS / "speech_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def start_gateway_with_threads(repository: Path, threads: int) -> tuple[Any, int]:
    """``gateway serve`` (embedded backend) with ``threads`` ONNX Runtime threads per run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_LOG_LEVEL="warning",
        GATEWAY_RELOAD_INTERVAL_S="0",
        GATEWAY_INTRA_OP_THREADS=str(threads),
        GATEWAY_REQUEST_TIMEOUT_S="300",
    )
    command = [sys.executable, "-m", "gateway.cli", "serve", "--repository", str(repository)]
    command += ["--http-port", "0", "--grpc-port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    assert proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    return proc, int(ready["grpc_port"])


if __name__ == "__main__":
    main()
