"""The engine models' CPU profile: one ONNX Runtime session per instance, requests validated first.

The model's name picks its signature (serving/contract.py) and ``<version>/model.onnx``; a
bad request gets INVALID_ARG naming the input and the instance keeps serving.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from serving.contract import ENGINE_MODELS, RequestError
from serving.onnx_session import make_session, run_requests


class OnnxModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.sig = ENGINE_MODELS[args["model_name"]]
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        self.session = make_session(path, int(params.get("intra_op_threads", "1")))

    def execute(self, requests: list) -> list:
        # A batched model's requests go through one ONNX Runtime call; each gets its own answer.
        inputs = []
        for request in requests:
            tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in self.sig.input_names}
            inputs.append({name: t.as_numpy() for name, t in tensors.items() if t is not None})
        responses = []
        for result in run_requests(self.session, self.sig, inputs):
            if isinstance(result, RequestError):
                code = pb_utils.TritonError.INVALID_ARG
            elif isinstance(result, Exception):
                code = pb_utils.TritonError.INTERNAL
            else:
                responses.append(
                    pb_utils.InferenceResponse([pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in result.items()])
                )
                continue
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.sig.name}: {result}", code)))
        return responses

    def finalize(self) -> None:
        self.session = None
