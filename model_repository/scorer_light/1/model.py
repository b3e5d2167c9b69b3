"""scorer_light, CPU profile: the ONNX Runtime engine model (serving/triton/onnx_model.py)."""

from serving.triton.onnx_model import OnnxModel as TritonPythonModel  # noqa: F401
