"""embedding_lookup, CPU profile: the shared ONNX Runtime runner (model_repository/onnx_runner.py)."""

import sys

# Before this repo's imports: the 2.51 stub runs Python isolated, so PYTHONDONTWRITEBYTECODE is
# ignored, and a model_repository/__pycache__ folder would look like a model to Triton.
sys.dont_write_bytecode = True

from model_repository.onnx_runner import OnnxRunner as TritonPythonModel

__all__ = ["TritonPythonModel"]
