"""Triton python-backend model that runs a variant's ONNX graph with ONNX Runtime.

For Triton builds without the ONNX Runtime backend. Same tensors as the production config:
each request's inputs go to the graph by name, all graph outputs come back by name.
"""

from __future__ import annotations

import json
import os
import site
import sys
from typing import Any

# The backend stub embeds an interpreter that ignores PYTHONPATH; honour it here so the
# serving environment's ONNX Runtime and numpy come first.
for _path in reversed([p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]):
    if _path not in sys.path:
        site.addsitedir(_path)
        sys.path.remove(_path)
        sys.path.insert(0, _path)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        """Open the graph named by the config's ``onnx_file`` parameter in the version dir."""
        config = json.loads(args["model_config"])
        onnx_file = config["parameters"]["onnx_file"]["string_value"]
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("ONNX_INTRA_OP_THREADS", "1"))
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            os.path.join(version_dir, onnx_file), options, providers=["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def execute(self, requests: list[Any]) -> list[Any]:
        """Run each request; a failing request gets its own error, the others still run."""
        responses = []
        for request in requests:
            try:
                feeds = {
                    name: pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                    for name in self.input_names
                }
                values = self.session.run(self.output_names, feeds)
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(value))
                    for name, value in zip(self.output_names, values, strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - reported to the client, not raised
                error = pb_utils.TritonError(f"inference failed: {exc}")
                responses.append(pb_utils.InferenceResponse(error=error))
        return responses
