"""Which graph runtimes a backend can run (manifest ``runtime``: ``onnx``, ``tensorrt``).

A backend that runs more than ONNX graphs says so with a ``runtimes`` attribute; any other
backend runs ONNX only. The registry asks before loading a variant, so a variant a backend
cannot run is reported unavailable with the reason instead of failing inside the backend.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from gateway.layout import Runtime

ONNX_ONLY: frozenset[Runtime] = frozenset({"onnx"})


@runtime_checkable
class RuntimeAware(Protocol):
    """A backend naming the runtimes it runs."""

    runtimes: frozenset[Runtime]


def runtimes_of(backend: object) -> frozenset[Runtime]:
    """The runtimes ``backend`` runs: its ``runtimes``, or ONNX alone."""
    return backend.runtimes if isinstance(backend, RuntimeAware) else ONNX_ONLY
