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
from serving.onnx_session import make_session, run_checked


class OnnxModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.sig = ENGINE_MODELS[args["model_name"]]
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        self.session = make_session(path, int(params.get("intra_op_threads", "1")))

    def execute(self, requests: list) -> list:
        responses = []
        for request in requests:
            arrays: dict[str, np.ndarray] = {}
            for name in self.sig.input_names:
                tensor = pb_utils.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    arrays[name] = tensor.as_numpy()
            try:
                outputs = run_checked(self.session, self.sig, arrays)
            except RequestError as exc:
                error = pb_utils.TritonError(f"{self.sig.name}: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, a) for n, a in outputs.items()]))
        return responses

    def finalize(self) -> None:
        self.session = None
