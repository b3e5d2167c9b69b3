"""embedding_lookup, CPU profile: the shared ONNX Runtime runner (model_repository/onnx_runner.py)."""

from model_repository.onnx_runner import OnnxRunner as TritonPythonModel

__all__ = ["TritonPythonModel"]
