"""Ranking requests as JSON files, checked against the tensor contract before they are sent.

A request file is one JSON object with exactly the four request tensors of one user as
(nested) arrays of integers, without the batch dimension; names, shapes and limits are those
of serving/contract.py::

    {"user_features": [17, 3, 5, 1],
     "history_ids": [12, 40, 7],
     "candidate_ids": [101, 202],
     "candidate_features": [[4, 9, 2], [1, 3, 0]]}

``load_request(path)`` returns a ``RankingRequest`` or raises ``RequestFileError`` whose
message names the file and the offending key; ``request_to_json`` writes the same form.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from client.ranking_client import RankingRequest
from serving.contract import ADAPTIVE_RANKING, RequestError, as_request, validate_inputs

REQUEST_KEYS: tuple[str, ...] = tuple(t.name for t in ADAPTIVE_RANKING.inputs if not t.optional)
_INT64 = np.iinfo(np.int64)


class RequestFileError(ValueError):
    """A request file that is not valid JSON or breaks the tensor contract; the message names the key."""


def _array(key: str, value: object) -> np.ndarray:
    """One JSON value as an int64 array, or RequestError naming ``key``."""
    if not isinstance(value, list):
        raise RequestError(f"key '{key}' must be a JSON array of integers, got {type(value).__name__}")
    try:
        array = np.array(value)
    except ValueError as e:  # ragged nesting
        raise RequestError(f"key '{key}' must be a rectangular array (rows of equal length): {e}") from None
    if array.size == 0:
        return array.astype(np.int64)  # shape checks below report the empty dimension
    if array.dtype.kind not in "iu":
        kinds = {"b": "booleans", "f": "floats", "U": "strings"}
        what = kinds.get(array.dtype.kind, "values that are not integers (or integers beyond int64)")
        raise RequestError(f"key '{key}' must hold integers, got {what}")
    if array.dtype.kind == "u" and int(array.max()) > _INT64.max:
        raise RequestError(f"key '{key}' has a value above the int64 maximum {_INT64.max}")
    return array.astype(np.int64)


def request_from_json(obj: object) -> RankingRequest:
    """A decoded request file as a RankingRequest; RequestError names the offending key."""
    if not isinstance(obj, dict):
        raise RequestError(f"a request must be a JSON object with keys {', '.join(REQUEST_KEYS)}")
    unknown = sorted(set(obj) - set(REQUEST_KEYS))
    if unknown:
        raise RequestError(f"unknown key(s) {', '.join(map(repr, unknown))}; expected {', '.join(REQUEST_KEYS)}")
    missing = [k for k in REQUEST_KEYS if k not in obj]
    if missing:
        raise RequestError(f"missing key(s) {', '.join(map(repr, missing))}")
    arrays = {key: _array(key, obj[key]) for key in REQUEST_KEYS}
    validate_request(arrays)
    return RankingRequest(**arrays)


def validate_request(request: RankingRequest | dict[str, np.ndarray]) -> dict[str, int]:
    """Check dtypes, shapes, limits and ids against the ensemble's signature (RequestError
    naming the tensor); return the sizes, e.g. ``{"L": 12, "N": 256}``. ``request``: a
    RankingRequest or one user's arrays without the batch dimension."""
    arrays = request.arrays() if isinstance(request, RankingRequest) else as_request(request)
    return validate_inputs(ADAPTIVE_RANKING, arrays)


def load_request(path: str | Path) -> RankingRequest:
    """Read and validate a request file (module docstring); RequestFileError on any problem."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except OSError as e:
        raise RequestFileError(f"cannot read request file {path}: {e.strerror or e}") from None
    except json.JSONDecodeError as e:
        raise RequestFileError(f"{path} is not valid JSON: {e}") from None
    try:
        return request_from_json(obj)
    except RequestError as e:
        raise RequestFileError(f"{path}: {e}") from None


def request_to_json(request: RankingRequest) -> dict[str, list]:
    """The request file form of ``request`` (``json.dump`` it)."""
    return {key: array.tolist() for key, array in request.fields().items()}
