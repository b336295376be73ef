"""Triton backend: the gateway in front of one or more real Triton servers (replicas).

The only package that imports ``tritonclient`` on the gateway side. It speaks gRPC through
``tritonclient.grpc.aio`` (a small pool of channels per server), carries each request's
deadline to Triton, and maps Triton's errors to the gateway's by status code, never by
message text. One concern per module:

- :mod:`.backend`: ``TritonBackend``, the ``Backend`` the data plane uses;
- :mod:`.replica`: one server's connections and state, changed only through its methods;
- :mod:`.fleet`: the replicas together, background tasks and the change signal;
- :mod:`.health`: probes, recovery, following loads made by others, metrics polls;
- :mod:`.placement`: residency within a GPU-memory budget (``routing/placement.py`` plans);
- :mod:`.scheduler`: leases, the least busy replica, failover and the fallback backend;
- :mod:`.server_metrics`: Triton's ``/metrics`` parsed, and the queue signal (pure);
- :mod:`.telemetry`: the gateway's Triton series, labels built once;
- :mod:`.errors`: Triton statuses mapped to the gateway's error table.
"""

from gateway.backends.triton.backend import TritonBackend
from gateway.backends.triton.errors import TritonInternalError, to_gateway_error
from gateway.backends.triton.server_metrics import (
    ModelCounters,
    QueueSignal,
    parse_triton_metrics,
    queue_signal,
)
from gateway.backends.triton.telemetry import FALLBACK

__all__ = [
    "FALLBACK",
    "ModelCounters",
    "QueueSignal",
    "TritonBackend",
    "TritonInternalError",
    "parse_triton_metrics",
    "queue_signal",
    "to_gateway_error",
]
