"""Triton's own ``/metrics``: per-model counters, and the queue signal between two scrapes.

Pure functions over the exposition text, except :func:`fetch_text`, which a probe runs on a
worker thread.
"""

from __future__ import annotations

import math
import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class ModelCounters:
    """Cumulative counters of one model in one scrape of Triton's ``/metrics``."""

    requests: float = 0.0
    """``nv_inference_request_success``."""
    queue_us: float = 0.0
    """``nv_inference_queue_duration_us``."""
    executions: float = 0.0
    """``nv_inference_exec_count``."""
    compute_us: float = 0.0
    """``nv_inference_compute_infer_duration_us``."""
    pending: float = 0.0
    """``nv_inference_pending_request_count`` (a gauge)."""


_COUNTER_FIELDS = {
    "nv_inference_request_success": "requests",
    "nv_inference_queue_duration_us": "queue_us",
    "nv_inference_exec_count": "executions",
    "nv_inference_compute_infer_duration_us": "compute_us",
    "nv_inference_pending_request_count": "pending",
}


def parse_triton_metrics(text: str) -> dict[str, ModelCounters]:
    """Per-model counters from the text of Triton's metrics endpoint (versions summed)."""
    values: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        name = _COUNTER_FIELDS.get(family.name)
        if name is None:
            continue
        for sample in family.samples:
            model = sample.labels.get("model")
            # The parser names counter samples "<family>_total"; skip any "_created".
            if model is None or sample.name not in (family.name, f"{family.name}_total"):
                continue
            fields = values.setdefault(model, {})
            fields[name] = fields.get(name, 0.0) + sample.value
    return {model: ModelCounters(**fields) for model, fields in values.items()}


@dataclass(frozen=True)
class QueueSignal:
    """What Triton reported about one model between two scrapes.

    Attributes:
        requests: Requests it completed in between.
        queue_s: Mean time a request waited in Triton's queue (0 without requests).
        execution_s: Mean time of one model execution (0 without executions).
        pending: Requests waiting for execution at the later scrape.
    """

    requests: float
    queue_s: float
    execution_s: float
    pending: float

    def runs_ahead(self, instances: int) -> int:
        """Triton's queue expressed as executions waiting ahead of a new request.

        The larger of the pending count and the mean queue time over the mean execution
        time (times the instances executing in parallel), so a queue that built and drained
        between two scrapes still shows.
        """
        by_time = 0.0
        if self.execution_s > 0:
            by_time = self.queue_s / self.execution_s * max(1, instances)
        return max(round(self.pending), math.floor(by_time))


def queue_signal(before: ModelCounters | None, after: ModelCounters) -> QueueSignal:
    """Difference two scrapes of one model (a restarted server counts from zero)."""
    base = before or ModelCounters()
    if after.requests < base.requests:  # counters reset: the server restarted
        base = ModelCounters()
    requests = after.requests - base.requests
    executions = after.executions - base.executions
    queue_s = (after.queue_us - base.queue_us) / requests / 1e6 if requests > 0 else 0.0
    execution_s = (after.compute_us - base.compute_us) / executions / 1e6 if executions else 0.0
    return QueueSignal(requests, max(0.0, queue_s), max(0.0, execution_s), after.pending)


def fetch_text(url: str, timeout_s: float) -> str:
    """GET ``url`` as text (blocking: run it on a worker thread)."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - configured
        body: bytes = response.read()
    return body.decode("utf-8", errors="replace")
