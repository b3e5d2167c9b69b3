"""Request parsing and score arithmetic for the `ranker` BLS model.

The Triton Python backend's ``model.py`` keeps only its lifecycle methods; every
decision it makes on a request lives here as a pure function, so it is unit-tested
without a server. ``top_k_indices`` and ``cascade_merge`` (implemented in
``model_repository/tensors.py``) take NumPy arrays or torch tensors, so the request
path runs on either profile's arrays; the rest works on NumPy (``parse_top_k`` copies a
one-element tensor to the host). Imports: numpy, stdlib, ``export.signature`` and
``tensors`` (this runs inside the Triton stub: no torch import, no triton).

Symbols (as in export/signature.py):
    N   candidates of the request            1 <= N <= N_MAX
    M   candidates the heavy tier re-scores  1 <= M <= N (cascade route)
    K   results returned                     1 <= K <= N

Bad requests raise ``RequestError`` (the model answers INVALID_ARG with its
message); misuse by the caller raises ``ValueError``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from export.signature import REQUEST_PARAMETERS, ROUTES, RequestError
from model_repository.tensors import Array, cascade_merge, to_numpy, top_k_indices

__all__ = [  # top_k_indices and cascade_merge are re-exported: callers import them from here
    "RequestOptions",
    "cascade_merge",
    "light_confidence",
    "micro_batches",
    "parse_parameters",
    "parse_top_k",
    "top_k_indices",
]

ROUTE_PARAM = "route"
BUDGET_PARAM = "latency_budget_ms"
# When the client sent the request (Unix ms): the budget then counts from there, so the time the
# request queued before the ranker is spent budget. Clocks must agree to a few ms (one host, NTP).
SENT_AT_PARAM = "sent_at_unix_ms"
MAX_CLOCK_AHEAD_MS = 1_000.0  # a stamp further in the future is a broken clock, not skew
assert {ROUTE_PARAM, BUDGET_PARAM} == set(REQUEST_PARAMETERS), "export.signature changed its request parameters"
DEFAULT_ROUTE = "auto"


@dataclass(frozen=True)
class RequestOptions:
    """The validated request parameters of one ranker request."""

    route: str
    latency_budget_ms: float
    budget_given: bool = False  # the request sent latency_budget_ms (else it is the default)
    sent_at_unix_ms: float | None = None  # SENT_AT_PARAM when the client stamped the request

    def waited_ms(self, now_unix_ms: float) -> float | None:
        """Time since the client sent the request (>= 0; small clock skew reads as 0), or None."""
        return None if self.sent_at_unix_ms is None else max(0.0, now_unix_ms - self.sent_at_unix_ms)


def parse_parameters(
    raw: str | dict | None, default_budget_ms: float, now_unix_ms: float | None = None
) -> RequestOptions:
    """Validate the request parameters (``request.parameters()`` is a JSON string).

    ``route`` must be one of ROUTES (default "auto"). ``latency_budget_ms`` may be
    a JSON number or a numeric string (Triton clients send strings or ints more
    easily than doubles); it must be finite and > 0, default ``default_budget_ms``.
    ``sent_at_unix_ms`` (optional, same forms) must be finite, > 0 and not more than
    MAX_CLOCK_AHEAD_MS ahead of ``now_unix_ms`` (default: the clock now).
    Unknown parameters are ignored: clients and the ensemble may add their own.
    """
    if not (math.isfinite(default_budget_ms) and default_budget_ms > 0):
        raise ValueError(f"default_budget_ms must be finite and > 0, got {default_budget_ms!r}")
    params = _as_dict(raw)
    route = params.get(ROUTE_PARAM, DEFAULT_ROUTE)
    if not isinstance(route, str) or route not in ROUTES:
        raise RequestError(f"parameter '{ROUTE_PARAM}' must be one of {', '.join(ROUTES)}; got {route!r}")
    budget = _parse_positive(BUDGET_PARAM, params.get(BUDGET_PARAM, default_budget_ms))
    sent_at = None
    if SENT_AT_PARAM in params:
        sent_at = _parse_positive(SENT_AT_PARAM, params[SENT_AT_PARAM])
        now = time.time() * 1e3 if now_unix_ms is None else now_unix_ms
        if sent_at > now + MAX_CLOCK_AHEAD_MS:
            raise RequestError(
                f"parameter '{SENT_AT_PARAM}' is {sent_at - now:.0f} ms in the future; the client's clock is off"
            )
    return RequestOptions(route, budget, budget_given=BUDGET_PARAM in params, sent_at_unix_ms=sent_at)


def _as_dict(raw: str | dict | None) -> dict[str, Any]:
    if raw is None:
        return {}
    if isinstance(raw, str):
        if not raw.strip():
            return {}
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise RequestError(f"request parameters are not valid JSON: {e}") from None
    if not isinstance(raw, dict):
        raise RequestError(f"request parameters must be a JSON object, got {type(raw).__name__}")
    return raw


def _parse_positive(name: str, value: Any) -> float:
    # bool is an int subclass: `true` must not become a 1 ms budget.
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise RequestError(f"parameter '{name}' must be a number, got {type(value).__name__} {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"parameter '{name}' must be a number, got {value!r}") from None
    except OverflowError:  # int too large for a float
        number = math.inf
    if not math.isfinite(number):
        raise RequestError(f"parameter '{name}' must be finite, got {value!r}")
    if number <= 0:
        raise RequestError(f"parameter '{name}' must be > 0, got {value!r}")
    return number


def parse_top_k(top_k: Array | None, n: int, default_k: int) -> int:
    """K for a request with ``n`` candidates: the optional ``top_k`` INT32 [1] input.

    Absent -> min(default_k, n). A K above n is clipped to n (asking for "the best
    100" of 40 candidates is not an error); K < 1 is. A tensor is read on the host.
    """
    if n < 1 or default_k < 1:
        raise ValueError(f"n and default_k must be >= 1, got n={n}, default_k={default_k}")
    if top_k is None:
        return min(default_k, n)
    top_k = to_numpy(top_k)
    if top_k.shape != (1,):
        raise RequestError(f"input 'top_k' must have shape [1], got {list(top_k.shape)}")
    if not np.issubdtype(top_k.dtype, np.integer):
        raise RequestError(f"input 'top_k' must be an integer, got {top_k.dtype}")
    k = int(top_k[0])
    if k < 1:
        raise RequestError(f"input 'top_k' must be >= 1, got {k}")
    return min(k, n)


def micro_batches(n: int, size: int) -> list[slice]:
    """Split 0..n into ceil(n / size) contiguous, balanced slices, in order.

    Balanced (lengths differ by at most one) so concurrent scorer calls finish
    together: n=1025, size=512 gives 342, 342, 341 instead of 512, 512, 1.
    n = 0 gives no slices.
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    count = -(-n // size)
    base, extra = divmod(n, count)  # the first `extra` slices get one more
    out, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        out.append(slice(start, stop))
        start = stop
    return out


def light_confidence(light: np.ndarray, k: int) -> float:
    """Confidence in [0, 1] that light's top-k set [N] -> k is the right set.

    Formula, with s the scores sorted descending (s[0] the best):
        gap     = s[k-1] - s[k]                  (the margin at the top-k boundary)
        spacing = (s[0] - s[N-1]) / (N - 1)      (the mean gap between neighbours)
        conf    = gap / (gap + spacing)
    A boundary gap equal to a typical gap gives 0.5, nine typical gaps 0.9; a clear
    break between k winners and the rest approaches 1; ties at the boundary (or all
    scores equal) give 0. k >= N gives 1.0: every candidate is returned. Non-finite
    scores give 0 (nothing to trust). O(N) via np.partition.
    """
    if light.ndim != 1:
        raise ValueError(f"light must be 1-D, got shape {list(light.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = light.shape[0]
    if k >= n:
        return 1.0
    s = light.astype(np.float64)
    if not np.all(np.isfinite(s)):
        return 0.0
    neg = np.partition(-s, [k - 1, k])
    gap = float(neg[k] - neg[k - 1])  # s[k-1] - s[k] >= 0
    spacing = float(s.max() - s.min()) / (n - 1)
    if gap <= 0.0:
        return 0.0
    return gap / (gap + spacing)
