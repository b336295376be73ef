"""Transport-free request and response types shared by the data plane and both transports."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gateway.tasks.base import Tensor

ParamValue = bool | int | float | str
"""A request or response parameter, as both KServe v2 transports can carry it."""


@dataclass(frozen=True)
class Budget:
    """What a request may spend; None means unbounded.

    Attributes:
        latency_budget_s: End-to-end latency the request should finish within.
        gpu_memory_budget_bytes: Most device memory the serving variant may need.
        min_accuracy: Lowest acceptable ``quality`` (the manifest's higher-is-better points).
        hard: Whether a late answer is useless (True: work that can no longer finish within
            the latency budget is dropped unrun) or still wanted (False); None: the default.
    """

    latency_budget_s: float | None = None
    gpu_memory_budget_bytes: int | None = None
    min_accuracy: float | None = None
    hard: bool | None = None

    def tightened(self, other: Budget) -> Budget:
        """The stricter of two budgets, field by field."""

        def low(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else min(a, b)

        memory = low(self.gpu_memory_budget_bytes, other.gpu_memory_budget_bytes)
        floor = (
            other.min_accuracy
            if self.min_accuracy is None
            else self.min_accuracy
            if other.min_accuracy is None
            else max(self.min_accuracy, other.min_accuracy)
        )
        return Budget(
            latency_budget_s=low(self.latency_budget_s, other.latency_budget_s),
            gpu_memory_budget_bytes=None if memory is None else int(memory),
            min_accuracy=floor,
            hard=_stricter_policy(self.hard, other.hard),
        )

    def or_defaults(self, defaults: Budget) -> Budget:
        """Fill the fields this budget leaves unset from ``defaults``."""
        return Budget(
            latency_budget_s=(
                defaults.latency_budget_s
                if self.latency_budget_s is None
                else self.latency_budget_s
            ),
            gpu_memory_budget_bytes=(
                defaults.gpu_memory_budget_bytes
                if self.gpu_memory_budget_bytes is None
                else self.gpu_memory_budget_bytes
            ),
            min_accuracy=defaults.min_accuracy if self.min_accuracy is None else self.min_accuracy,
            hard=defaults.hard if self.hard is None else self.hard,
        )


def _stricter_policy(a: bool | None, b: bool | None) -> bool | None:
    """Hard if either is hard, soft if either is soft, else unset."""
    if a is None or b is None:
        return b if a is None else a
    return a or b


@dataclass(frozen=True)
class NamedTensor:
    """One task-level tensor: KServe datatype plus a shaped numpy array.

    ``BYTES`` tensors are numpy object arrays of ``bytes``.
    """

    name: str
    datatype: str
    data: Tensor

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's shape."""
        return tuple(int(d) for d in self.data.shape)


@dataclass(frozen=True)
class InferRequest:
    """One inference request, as both transports hand it to the data plane.

    Attributes:
        model_name: A family (routed) or ``family__variant`` (pinned).
        inputs: Task-level input tensors.
        model_version: Requested version; empty for the current one.
        request_id: Echoed back in the response.
        parameters: Request parameters: budgets, ``timeout`` and task options (``top_k``).
        headers: HTTP headers or gRPC metadata with lower-case names (budgets may be here).
        timeout_s: Time the transport allows from arrival (the gRPC deadline), if any.
        requested_outputs: Output names to return; None returns all.
        protocol: ``"grpc"`` or ``"http"``, for metrics.
    """

    model_name: str
    inputs: list[NamedTensor]
    model_version: str = ""
    request_id: str = ""
    parameters: Mapping[str, ParamValue] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None
    requested_outputs: list[str] | None = None
    protocol: str = "grpc"


@dataclass(frozen=True)
class Selection:
    """Which variant served a request and why.

    Attributes:
        variant: Variant name, e.g. ``"int8"``.
        model_name: The variant's model name, e.g. ``"vision__int8"``.
        reason: A short code (see ``routing.selector``).
        detail: One human-readable sentence behind the code.
        predicted_latency_s: What the selector expected the request to take.
    """

    variant: str
    model_name: str
    reason: str
    detail: str
    predicted_latency_s: float | None = None


@dataclass(frozen=True)
class InferResponse:
    """The result of one request, with the routing decision."""

    model_name: str
    model_version: str
    request_id: str
    outputs: list[NamedTensor]
    selection: Selection

    @property
    def parameters(self) -> dict[str, ParamValue]:
        """Response parameters that say which variant served the request and why."""
        return {
            "variant": self.selection.variant,
            "served_model": self.selection.model_name,
            "selection_reason": self.selection.reason,
            "selection_detail": self.selection.detail,
        }


def bytes_array(items: list[bytes]) -> Tensor:
    """A 1-D object array of bytes, the in-memory form of a ``BYTES`` tensor."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
