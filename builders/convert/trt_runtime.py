"""Run and measure a TensorRT engine on the GPU, so engines are evaluated and profiled too.

:class:`EngineRunner` is a ``RunGraph`` over one execution context (TensorRT 10's
name-based I/O: ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``), with
torch CUDA tensors as device buffers. :func:`measure_engine_memory` loads an engine in a fresh
process and reads how much device memory it took. Both need TensorRT, torch and a GPU.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from builders.profile import measure_in_child
from gateway.tasks.base import Tensor


class EngineRunner:
    """Runs a serialised engine on named numpy tensors (one run at a time)."""

    def __init__(self, plan: Path) -> None:
        """Deserialise ``plan`` and create its execution context on the current GPU."""
        import tensorrt as trt
        import torch

        self._trt = trt
        self._torch = torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {plan}")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self._engine.get_tensor_mode(n) == mode]
        self.outputs = [n for n in names if self._engine.get_tensor_mode(n) != mode]
        self._stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        # One execution context runs one inference at a time; concurrent callers queue.
        self._lock = threading.Lock()

    def _dtype(self, name: str) -> np.dtype[Any]:
        return np.dtype(self._trt.nptype(self._engine.get_tensor_dtype(name)))

    def __call__(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run the engine once; the outputs come back as numpy arrays."""
        torch = self._torch
        with self._lock:
            keep = []
            for name in self.inputs:
                array = np.ascontiguousarray(inputs[name], dtype=self._dtype(name))
                device = torch.from_numpy(array).cuda()
                keep.append(device)
                self._context.set_input_shape(name, tuple(array.shape))
                self._context.set_tensor_address(name, device.data_ptr())
            outputs = {}
            for name in self.outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                host = np.empty(shape, dtype=self._dtype(name))
                device = torch.from_numpy(host).cuda()
                outputs[name] = device
                self._context.set_tensor_address(name, device.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT failed to execute the engine")
            self._stream.synchronize()
            return {name: device.cpu().numpy() for name, device in outputs.items()}


@dataclass(frozen=True)
class EngineMemory:
    """What loading an engine took, measured in a fresh process.

    Attributes:
        device_bytes: GPU memory taken by deserialising the engine and creating one
            execution context (free device memory before minus after): weights plus the
            context's activation memory.
        activation_bytes: The context's share, ``ICudaEngine.device_memory_size_v2``
            (``device_memory_size`` before TensorRT 10.1).
        resident_bytes: Host resident-memory growth of the same steps.
    """

    device_bytes: int
    activation_bytes: int
    resident_bytes: int

    @property
    def weights_bytes(self) -> int:
        """The rest of what the engine took: its weights (and TensorRT's own buffers)."""
        return max(0, self.device_bytes - self.activation_bytes)


_MEMORY_SCRIPT = """
import json, resource, sys
import tensorrt as trt
import torch
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
torch.cuda.init()
torch.cuda.synchronize()
logger = trt.Logger(trt.Logger.WARNING)
runtime = trt.Runtime(logger)
plan = open(sys.argv[1], "rb").read()
free_before, rss_before = torch.cuda.mem_get_info()[0], rss()
engine = runtime.deserialize_cuda_engine(plan)
context = engine.create_execution_context()
torch.cuda.synchronize()
free_after, rss_after = torch.cuda.mem_get_info()[0], rss()
size = getattr(engine, "device_memory_size_v2", None)
if size is None:
    size = engine.device_memory_size
print(json.dumps({
    "device_bytes": max(free_before - free_after, 0),
    "activation_bytes": int(size),
    "resident_bytes": max(rss_after - rss_before, 0),
}))
"""


def measure_engine_memory(plan: Path) -> EngineMemory:
    """Load ``plan`` in a fresh process and measure the memory it takes (see the fields)."""
    return EngineMemory(**measure_in_child(_MEMORY_SCRIPT, str(plan)))
