"""Settings of one gateway process, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024
"""Bytes per MiB; budgets named ``*_mb`` are in MiB (2**20 bytes)."""


class GatewaySettings(BaseSettings):
    """Everything one gateway process needs; each field is ``GATEWAY_<NAME>`` in the env."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="forbid", frozen=True)

    repository: Path = Path("model_repo")
    """Triton model repository holding ``<family>.manifest.json`` and the variant dirs."""
    host: str = "127.0.0.1"
    """Address both servers bind; loopback unless deliberately exposed."""
    http_port: int = Field(8000, ge=0, le=65535)
    """KServe v2 HTTP/REST port (also serves ``/metrics``); 0 picks a free port."""
    grpc_port: int = Field(8001, ge=0, le=65535)
    """KServe v2 gRPC port; 0 picks a free port."""

    task_threads: int = Field(4, ge=1, le=256)
    """Threads running task pre/post-processing (decoding, features, the decode loop)."""
    inference_threads: int = Field(2, ge=1, le=256)
    """Threads running graphs in the embedded backend, shared by all variants."""
    intra_op_threads: int = Field(1, ge=0, le=256)
    """ONNX Runtime threads inside one graph run; 0 lets ONNX Runtime choose."""
    variant_concurrency: int = Field(2, ge=1, le=64)
    """Graph runs (batches) of one variant that may execute at the same time."""
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """ONNX Runtime execution providers, in order of preference."""

    max_in_flight: int = Field(256, ge=1)
    """Requests admitted by the whole gateway at once; more are shed (429)."""
    max_in_flight_per_variant: int = Field(32, ge=1)
    """Requests admitted to one variant at once; more go elsewhere or are shed."""
    max_queue_per_variant: int = Field(64, ge=1)
    """Graph runs waiting in one variant's queue; a full queue sheds (429)."""
    max_batch_delay_ms: float = Field(0.0, ge=0, le=1000)
    """Extra time a partial batch waits for more requests. At 0, batches are only formed
    from requests already queued, so an idle gateway adds no latency."""

    default_latency_budget_ms: float | None = Field(None, gt=0)
    """Latency budget applied when a request states none; None means unbounded."""
    default_gpu_memory_budget_mb: float | None = Field(None, gt=0)
    """GPU-memory budget (MiB) applied when a request states none; None means unbounded."""
    default_min_accuracy: float | None = Field(None, ge=0)
    """Quality floor (manifest points) applied when a request states none."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Hard limit on one request when the client sets no deadline."""
    max_payload_bytes: int = Field(64 * MIB, ge=1024)
    """Largest request body (HTTP) or message (gRPC) accepted; larger ones get 413."""

    live_window_s: float = Field(10.0, gt=0)
    """Age of the newest latency samples kept per variant for the observed p95."""
    live_min_samples: int = Field(5, ge=1)
    """Samples at which the observed latency reaches its full weight."""
    observed_weight: float = Field(0.5, ge=0, le=1)
    """Weight of the observed p95 against the profiled one at full sample count."""

    reload_interval_s: float = Field(2.0, ge=0)
    """How often manifests are checked for changes; 0 disables reloading."""
    shutdown_grace_s: float = Field(5.0, ge=0)
    """Time in-flight requests get to finish on shutdown."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Log level of the gateway and its servers."""

    @model_validator(mode="after")
    def _check(self) -> GatewaySettings:
        if self.http_port and self.http_port == self.grpc_port:
            raise ValueError(f"http_port and grpc_port must differ, both are {self.http_port}")
        if self.max_in_flight_per_variant > self.max_in_flight:
            raise ValueError(
                f"max_in_flight_per_variant ({self.max_in_flight_per_variant}) exceeds "
                f"max_in_flight ({self.max_in_flight})"
            )
        if not self.execution_providers:
            raise ValueError("execution_providers must name at least one provider")
        return self

    @property
    def default_latency_budget_s(self) -> float | None:
        """The default latency budget in seconds."""
        ms = self.default_latency_budget_ms
        return None if ms is None else ms / 1000.0

    @property
    def default_gpu_memory_budget_bytes(self) -> int | None:
        """The default GPU-memory budget in bytes."""
        mb = self.default_gpu_memory_budget_mb
        return None if mb is None else int(mb * MIB)

    @property
    def max_batch_delay_s(self) -> float:
        """The batching delay in seconds."""
        return self.max_batch_delay_ms / 1000.0
