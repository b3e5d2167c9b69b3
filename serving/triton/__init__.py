"""The Python-backend models' lifecycle classes: the only modules that import ``triton_python_backend_utils``."""
