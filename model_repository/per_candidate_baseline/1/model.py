"""per_candidate_baseline, CPU profile: the ONNX Runtime engine model (serving/triton/onnx_model.py)."""

from serving.triton.onnx_model import OnnxModel as TritonPythonModel  # noqa: F401
