"""Test helpers: one inference call on either protocol through the stock tritonclient."""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

PROTOCOLS = ("grpc", "http")
HTTP_STATUS = {
    "NOT_FOUND": 404,
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "FAILED_PRECONDITION": 400,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
}


@dataclass
class Result:
    """Outputs and response parameters of one call."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]

    @property
    def variant(self) -> str:
        return str(self.parameters["variant"])

    @property
    def reason(self) -> str:
        return str(self.parameters["selection_reason"])


@dataclass
class Wire:
    """A tritonclient of either protocol behind one call signature."""

    protocol: str
    client: Any

    def infer(
        self,
        model: str,
        inputs: list[tuple[str, str, np.ndarray]],
        *,
        parameters: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        version: str = "",
        timeout_us: int | None = None,
        outputs: list[str] | None = None,
    ) -> Result:
        lib = grpcclient if self.protocol == "grpc" else httpclient
        infer_inputs = []
        for name, datatype, array in inputs:
            tensor = lib.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)
            infer_inputs.append(tensor)
        requested = [lib.InferRequestedOutput(n) for n in outputs] if outputs else None
        result = self.client.infer(
            model,
            infer_inputs,
            model_version=version,
            outputs=requested,
            parameters=parameters,
            headers=headers,
            timeout=timeout_us,
        )
        response = result.get_response()
        if self.protocol == "grpc":
            params = {
                k: getattr(v, v.WhichOneof("parameter_choice"))
                for k, v in response.parameters.items()
            }
            names = [o.name for o in response.outputs]
        else:
            params = dict(response.get("parameters", {}))
            names = [o["name"] for o in response["outputs"]]
        return Result({n: result.as_numpy(n) for n in names}, params)


def code_of(exc: InferenceServerException, protocol: str) -> str | int:
    """The gRPC status name (``NOT_FOUND``) or the HTTP status (404) of a failed call."""
    status = exc.status()
    if protocol == "grpc":
        return str(status).removeprefix("StatusCode.")
    return int(status)


def expected(code: str, protocol: str, http_status: int | None = None) -> str | int:
    """What a gRPC status name should look like on ``protocol``."""
    return code if protocol == "grpc" else (http_status or HTTP_STATUS[code])


def png(level: int, size: int = 8) -> bytes:
    """A solid gray PNG."""
    buffer = io.BytesIO()
    Image.new("L", (size, size), color=level).save(buffer, format="PNG")
    return buffer.getvalue()


def wav(samples: np.ndarray, rate_hz: int = 16000) -> bytes:
    """16-bit mono PCM WAV bytes of float samples in [-1, 1]."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate_hz)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def tone(seconds: float = 0.5, freq_hz: float = 440.0, rate_hz: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate_hz)) / rate_hz
    return (0.5 * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def objects(*items: bytes) -> np.ndarray:
    """A BYTES tensor [B]."""
    out = np.empty(len(items), dtype=object)
    out[:] = list(items)
    return out


def image_input(*levels: int) -> list[tuple[str, str, np.ndarray]]:
    """Encoded solid-gray PNGs as the ``image`` input."""
    return [("image", "BYTES", objects(*(png(level) for level in levels)))]


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
"""A scrape: every sample's value, keyed by (name, labels)."""


def parse_samples(exposition: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def metric(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value from a scrape (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
