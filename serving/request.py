"""The ranker's request parameters and ``top_k``, validated.

Bad requests raise ``RequestError`` (answered INVALID_ARG with its message); a caller's
misuse raises ``ValueError``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.arrays import Array, to_numpy, validate_inputs
from serving.contract import BUDGET_PARAM, DEFAULT_ROUTE, RANKER, ROUTE_PARAM, ROUTES, SENT_AT_PARAM, RequestError

# Clocks must agree to a few ms (one host, NTP); a stamp further ahead is a broken clock, not skew.
MAX_CLOCK_AHEAD_MS = 1_000.0


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


@dataclass(frozen=True)
class RankerRequest:
    """A ranker request that passed validation: its parameters and K."""

    options: RequestOptions
    k: int


def parse_request(
    inputs: dict[str, Array], raw_parameters: str | dict | None, default_budget_ms: float, default_top_k: int
) -> RankerRequest:
    """Validate a ranker request's inputs (contract.RANKER), parameters and ``top_k``."""
    sizes = validate_inputs(RANKER, inputs)
    options = parse_parameters(raw_parameters, default_budget_ms)
    top_k = inputs.get("top_k")  # (1, 1): the one user's [1]
    return RankerRequest(options, parse_top_k(None if top_k is None else top_k[0], sizes["N"], default_top_k))
