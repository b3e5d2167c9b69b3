"""Server management outside the server: the local launcher and the supervisor (``python -m serving.server``)."""
