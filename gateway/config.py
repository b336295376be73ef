"""Settings of one gateway process, read from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.faults import BreakerPolicy, QuarantinePolicy

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

    workers: int = Field(1, ge=1, le=64)
    """Gateway processes serving the same ports, so task code (image decoding, features, the
    decode loop) uses more than one core; they share their live load, so every routing
    decision sees the whole gateway. One per core beyond the first is a good start."""
    task_threads: int = Field(2, ge=1, le=256)
    """Threads of each worker's compute pool: each runs one request's task code (decoding,
    features, the decode loop) and its graph calls at a time, so about one per core the
    worker may use. With the Triton backend, see ``triton_runs_per_server`` instead."""
    inline_task_max_ms: float = Field(1.0, ge=0, le=100)
    """A request whose predicted task time is at most this runs on the event loop itself,
    saving the two thread hand-offs to and from a worker, when nothing is queued; 0 sends
    every request to the pool."""
    intra_op_threads: int = Field(1, ge=0, le=256)
    """ONNX Runtime threads inside one graph run; 0 lets ONNX Runtime choose."""
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """ONNX Runtime execution providers, in order of preference."""

    max_in_flight: int = Field(256, ge=1)
    """Requests admitted by the whole gateway at once; more are shed (429)."""
    max_in_flight_per_variant: int = Field(32, ge=1)
    """Requests admitted to one variant at once; more go elsewhere or are shed."""
    max_queue: int = Field(256, ge=1)
    """Requests waiting for a worker of the compute pool; a full queue sheds (429)."""

    target_utilization: float = Field(0.85, gt=0, le=4)
    """Share of the compute's capacity that routing keeps for the most accurate variants:
    while the pool's threads are busier than this (measured run time per second), each
    request goes to the cheapest variant that meets its budget, so overload is served at
    the fastest variant's capacity instead of being shed from a queue of big variants."""

    queue_headroom: float = Field(0.5, ge=0, le=10)
    """How much longer than predicted a wait may turn out for a variant dearer than the
    cheapest that fits: it is chosen only if it fits with its wait counted ``1 +
    queue_headroom`` times. A queue that builds behind it then still fits on a cheaper
    variant instead of being shed; an idle pool is unaffected."""

    default_latency_budget_ms: float | None = Field(None, gt=0)
    """Latency budget applied when a request states none; None means unbounded."""
    default_gpu_memory_budget_mb: float | None = Field(None, gt=0)
    """GPU-memory budget (MiB) applied when a request states none; None means unbounded."""
    default_min_accuracy: float | None = Field(None, ge=0)
    """Quality floor (manifest points) applied when a request states none."""
    default_latency_budget_policy: Literal["hard", "soft"] = "hard"
    """What a late answer is worth when a request does not say (``latency_budget_policy``):
    ``hard``, useless, so a request that can no longer finish within its latency budget is
    dropped before it runs (DEADLINE_EXCEEDED); ``soft``, still wanted, so it runs late. A
    client deadline is always hard; a soft budget shorter than it stays soft up to it."""
    request_timeout_s: float = Field(60.0, gt=0)
    """Hard limit on one request when the client sets no deadline."""
    max_payload_bytes: int = Field(64 * MIB, ge=1024)
    """Largest request body (HTTP) or message (gRPC) accepted; larger ones get 413."""

    max_items_per_request: int = Field(64, ge=1)
    """Task items (images, audio clips, texts) one request may carry; a BYTES tensor may hold
    no more elements than this."""
    max_text_chars: int = Field(4096, ge=1)
    """Characters in one text item (after UTF-8 decoding)."""
    max_audio_s: float = Field(60.0, gt=0)
    """Seconds of audio in one item, read from the audio file's header (WAV, FLAC, Ogg) or the
    sample count at 16 kHz before any decoding (a family's own limit also applies)."""
    max_image_pixels: int = Field(16_777_216, ge=1)
    """Width x height of one image, read from the file header before decoding (stops
    decompression bombs) or from the shape of a UINT8 tensor."""
    max_json_depth: int = Field(32, ge=4, le=1000)
    """Nesting depth of an HTTP JSON body, checked on the raw bytes before parsing."""
    max_tensor_elements: int = Field(16_777_216, ge=1)
    """Elements of one input tensor, checked from its declared shape before its data is
    decoded."""

    auth_keys_file: Path | None = None
    """JSON file of API keys, stored as SHA-256 hashes with their scopes (``inference``,
    ``admin``, ``metrics``); set, every call except the open ones needs a key, sent as
    ``authorization: Bearer <key>`` or ``x-api-key: <key>``. None: no authentication. The
    file is re-read when it changes, so keys rotate without a restart."""
    auth_open_health: bool = True
    """Health calls (``/v2/health/*``, ServerLive, ServerReady) need no key, for probes."""
    auth_open_metrics: bool = True
    """``/metrics`` needs no key; False asks for a key with the ``metrics`` scope."""
    tls_cert_file: Path | None = None
    """PEM certificate chain both servers present; set with ``tls_key_file`` to serve TLS
    (HTTPS and gRPC over TLS). Reloaded when the file changes."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: Path | None = None
    """PEM CA bundle client certificates must chain to: set, both servers require a client
    certificate (mutual TLS)."""
    secrets_reload_interval_s: float = Field(5.0, ge=0)
    """How often the key file and the TLS files are checked for changes; 0: never."""
    triton_tls: bool = False
    """Connect to the Triton servers over TLS (gRPC), verifying them against
    ``triton_tls_ca_file`` (or the system CAs)."""
    triton_tls_ca_file: Path | None = None
    """PEM CA bundle the Triton servers' certificates chain to."""
    triton_tls_cert_file: Path | None = None
    """PEM client certificate the gateway presents to Triton (mutual TLS), with its key."""
    triton_tls_key_file: Path | None = None
    """PEM private key of ``triton_tls_cert_file``."""

    quarantine_failures: int = Field(3, ge=1)
    """Failed runs in a row (the variant's own faults) that quarantine a variant: routed
    requests go to the family's other variants until a health check passes."""
    quarantine_check_s: float = Field(10.0, gt=0)
    """Seconds from quarantine to the first health check (doubling after each failed one)."""
    quarantine_max_check_s: float = Field(300.0, gt=0)
    """Longest wait between two health checks of a quarantined variant."""
    circuit_failures: int = Field(5, ge=1)
    """Errors in a row from a Triton server that still answers its probes (INTERNAL and the
    like) that open its circuit: no requests go there until a trial succeeds."""
    circuit_open_s: float = Field(5.0, gt=0)
    """Seconds a circuit stays open before a trial request (doubling after a failed trial)."""
    circuit_max_open_s: float = Field(60.0, gt=0)
    """Longest a circuit stays open."""

    live_min_samples: int = Field(5, ge=1)
    """Measured runs of a variant at which their correction of its profile reaches full
    weight."""
    observed_stale_s: float = Field(3.0, gt=0)
    """Seconds over which what a variant's runs measured fades once no new run comes: a
    variant routing stopped choosing during a slow spell is predicted from its profile
    again, and tried again, instead of being judged on that spell for good."""
    observed_weight: float = Field(1.0, ge=0, le=1)
    """Weight of what the gateway measures live (service times, the event loop's lag)
    against the profiles; 0 routes on the profiles alone."""

    backend: Literal["embedded", "triton"] = "embedded"
    """Where graphs run: ``embedded`` ONNX Runtime in this process, or ``triton`` servers."""
    triton_urls: tuple[str, ...] = ()
    """gRPC ``host:port`` of each Triton server (replicas serving the same repository)."""
    triton_metrics_urls: tuple[str, ...] = ()
    """Triton metrics endpoints (``http://host:8002/metrics``), one per ``triton_urls`` entry
    in the same order, polled for queue time and inference counts; empty: not polled."""
    triton_explicit_model_control: bool = True
    """The servers run with ``--model-control-mode=explicit``, so the gateway loads and
    unloads variants; otherwise they hold their whole repository and the gateway only reads
    readiness."""
    triton_gpu_memory_budget_mb: float | None = Field(None, gt=0)
    """GPU memory (MiB) each Triton server may give to variants, counted with the manifests'
    ``gpu_memory_bytes``; variants load on demand within it. None loads every variant."""
    triton_fallback_embedded: bool = False
    """Also hold every variant in the embedded backend, which serves when no Triton server
    can (costs the memory of every variant in the gateway process)."""
    triton_runs_per_server: int = Field(4, ge=1, le=256)
    """Requests the gateway keeps running at once per Triton server (their graph calls in
    flight there); more wait in the gateway's queue, where admission sees them."""
    triton_channels_per_server: int = Field(2, ge=1, le=16)
    """gRPC connections kept to each Triton server; requests spread over them."""
    triton_probe_interval_s: float = Field(1.0, gt=0, le=60)
    """How often each server's liveness is checked (and its metrics polled); a server that
    misses two checks in a row, or refuses connections, is unhealthy until it answers."""
    triton_load_timeout_s: float = Field(120.0, gt=0)
    """Time one variant load on a Triton server may take."""
    triton_demand_window_s: float = Field(30.0, gt=0)
    """Time constant of the decaying demand count that decides which variants stay loaded."""

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
        if self.backend == "triton" and not self.triton_urls:
            raise ValueError("backend 'triton' needs at least one server in triton_urls")
        if self.triton_metrics_urls and len(self.triton_metrics_urls) != len(self.triton_urls):
            raise ValueError(
                f"triton_metrics_urls has {len(self.triton_metrics_urls)} entries, "
                f"triton_urls {len(self.triton_urls)}: give one per server or none"
            )
        self._check_tls()
        if self.quarantine_max_check_s < self.quarantine_check_s:
            raise ValueError("quarantine_max_check_s must be at least quarantine_check_s")
        if self.circuit_max_open_s < self.circuit_open_s:
            raise ValueError("circuit_max_open_s must be at least circuit_open_s")
        if self.triton_gpu_memory_budget_mb is not None and not self.triton_explicit_model_control:
            raise ValueError(
                "triton_gpu_memory_budget_mb needs triton_explicit_model_control: the gateway "
                "can only keep to a budget on servers it may load and unload models on"
            )
        return self

    def _check_tls(self) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        if (self.triton_tls_cert_file is None) != (self.triton_tls_key_file is None):
            raise ValueError(
                "triton_tls_cert_file and triton_tls_key_file go together: set both or neither"
            )
        uses_triton_tls = self.triton_tls_ca_file or self.triton_tls_cert_file
        if uses_triton_tls and not self.triton_tls:
            raise ValueError("triton_tls_* files are set but triton_tls is false")

    @property
    def quarantine_policy(self) -> QuarantinePolicy:
        """The variant quarantine policy these settings describe."""
        return QuarantinePolicy(
            self.quarantine_failures, self.quarantine_check_s, self.quarantine_max_check_s
        )

    @property
    def breaker_policy(self) -> BreakerPolicy:
        """The per-server circuit breaker policy these settings describe."""
        return BreakerPolicy(self.circuit_failures, self.circuit_open_s, self.circuit_max_open_s)

    @property
    def tls_enabled(self) -> bool:
        """Both servers serve TLS."""
        return self.tls_cert_file is not None

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
    def triton_gpu_memory_budget_bytes(self) -> int | None:
        """The per-server Triton GPU-memory budget in bytes (None: unbounded)."""
        mb = self.triton_gpu_memory_budget_mb
        return None if mb is None else int(mb * MIB)
