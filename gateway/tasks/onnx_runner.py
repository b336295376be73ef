"""A ``RunGraph`` over an ONNX Runtime session: the one way graphs run in-process."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import onnxruntime as ort

from gateway.tasks.base import MAIN_GRAPH, RunGraph, Tensor


def make_session(path: Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """Open a CPU session with a fixed thread count, so measurements are comparable."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # warnings about unused initializers are noise here
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_runner(session: ort.InferenceSession) -> RunGraph:
    """Wrap a session as a ``RunGraph`` returning every output by name."""
    output_names = [o.name for o in session.get_outputs()]

    def run(inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH) -> Mapping[str, Tensor]:
        values = session.run(output_names, dict(inputs))
        return dict(zip(output_names, values, strict=True))

    return run


def onnx_graph_runner(path: Path, intra_op_threads: int = 1) -> RunGraph:
    """Open ``path`` and return a ``RunGraph`` for it."""
    return session_runner(make_session(path, intra_op_threads))


class GraphSessions:
    """Runs the graphs of a multi-graph variant by name, one session per graph."""

    def __init__(self, paths: Mapping[str, Path], intra_op_threads: int = 1) -> None:
        """Open every graph of ``paths`` (graph name → file)."""
        self.runners = {
            name: session_runner(make_session(path, intra_op_threads))
            for name, path in paths.items()
        }

    def __call__(
        self, inputs: Mapping[str, Tensor], graph: str = MAIN_GRAPH
    ) -> Mapping[str, Tensor]:
        """Run the graph called ``graph`` on ``inputs``."""
        runner = self.runners.get(graph)
        if runner is None:
            raise KeyError(f"no graph named {graph!r}; this variant has {sorted(self.runners)}")
        return runner(inputs)
