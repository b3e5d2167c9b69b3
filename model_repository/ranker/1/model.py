"""ranker: the BLS model that routes and broadcasts (serving/triton/ranker_model.py)."""

from serving.triton.ranker_model import RankerModel as TritonPythonModel  # noqa: F401
