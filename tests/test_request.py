"""Unit tests of request parsing (serving/request.py) and the score arithmetic the ranker uses."""

from __future__ import annotations

import numpy as np
import pytest

from serving.arrays import cascade_merge, top_k_indices
from serving.contract import SENT_AT_PARAM, RequestError
from serving.request import RequestOptions, parse_parameters, parse_top_k
from serving.routing import light_confidence

DEFAULT_BUDGET = 100.0


# --- parse_parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (None, RequestOptions("auto", DEFAULT_BUDGET)),
        ("", RequestOptions("auto", DEFAULT_BUDGET)),
        ("{}", RequestOptions("auto", DEFAULT_BUDGET)),
        ('{"route": "heavy"}', RequestOptions("heavy", DEFAULT_BUDGET)),
        ('{"route": "cascade", "latency_budget_ms": 25}', RequestOptions("cascade", 25.0, budget_given=True)),
        ('{"latency_budget_ms": 12.5}', RequestOptions("auto", 12.5, budget_given=True)),
        ('{"latency_budget_ms": "7.5"}', RequestOptions("auto", 7.5, budget_given=True)),
        ({"route": "light", "latency_budget_ms": 3}, RequestOptions("light", 3.0, budget_given=True)),
        ('{"route": "auto", "trace": true, "priority": 2}', RequestOptions("auto", DEFAULT_BUDGET)),
    ],
    ids=[
        "none",
        "empty-string",
        "empty-object",
        "route-only",
        "route-and-int-budget",
        "float-budget",
        "string-budget",
        "dict",
        "unknown-ignored",
    ],
)
def test_parse_parameters(raw, expected):
    assert parse_parameters(raw, DEFAULT_BUDGET) == expected


@pytest.mark.parametrize(
    "raw, match",
    [
        ('{"route": "fast"}', r"'route' must be one of auto, light, heavy, cascade"),
        ('{"route": "HEAVY"}', r"'route' must be one of"),
        ('{"route": 1}', r"'route' must be one of"),
        ('{"latency_budget_ms": "soon"}', r"'latency_budget_ms' must be a number"),
        ('{"latency_budget_ms": "nan"}', r"'latency_budget_ms' must be finite"),
        ('{"latency_budget_ms": NaN}', r"'latency_budget_ms' must be finite"),
        ('{"latency_budget_ms": "inf"}', r"'latency_budget_ms' must be finite"),
        ('{"latency_budget_ms": 1e999}', r"'latency_budget_ms' must be finite"),
        ('{"latency_budget_ms": -5}', r"'latency_budget_ms' must be > 0"),
        ('{"latency_budget_ms": 0}', r"'latency_budget_ms' must be > 0"),
        ('{"latency_budget_ms": "0.0"}', r"'latency_budget_ms' must be > 0"),
        ('{"latency_budget_ms": true}', r"'latency_budget_ms' must be a number, got bool"),
        ('{"latency_budget_ms": null}', r"'latency_budget_ms' must be a number, got NoneType"),
        ('{"latency_budget_ms": [5]}', r"'latency_budget_ms' must be a number, got list"),
        ("{route: heavy}", r"not valid JSON"),
        ('["heavy"]', r"must be a JSON object"),
    ],
    ids=[
        "unknown-route",
        "route-case",
        "route-not-string",
        "budget-text",
        "budget-nan-string",
        "budget-nan-literal",
        "budget-inf-string",
        "budget-overflow",
        "budget-negative",
        "budget-zero",
        "budget-zero-string",
        "budget-bool",
        "budget-null",
        "budget-list",
        "bad-json",
        "json-array",
    ],
)
def test_parse_parameters_rejects(raw, match):
    with pytest.raises(RequestError, match=match):
        parse_parameters(raw, DEFAULT_BUDGET)


NOW_MS = 1.7e12  # a fixed "now" (Unix ms) for the send-time tests


@pytest.mark.parametrize(
    "sent_at, waited",
    [(NOW_MS - 30.0, 30.0), (str(NOW_MS - 2.5), 2.5), (NOW_MS + 4.0, 0.0), (NOW_MS - 10_000, 10_000.0)],
    ids=["number", "string", "clock-skew-reads-0", "long-ago"],
)
def test_sent_at_gives_the_time_already_spent(sent_at, waited):
    options = parse_parameters({"latency_budget_ms": 50, SENT_AT_PARAM: sent_at}, DEFAULT_BUDGET, now_unix_ms=NOW_MS)
    assert options.waited_ms(NOW_MS) == pytest.approx(waited)
    assert parse_parameters({}, DEFAULT_BUDGET).waited_ms(NOW_MS) is None  # not stamped: unknown


@pytest.mark.parametrize(
    "value, match",
    [
        (True, "must be a number, got bool"),
        ("yesterday", "must be a number"),
        (float("nan"), "must be finite"),
        (-1.0, "must be > 0"),
        (0, "must be > 0"),
        (NOW_MS + 5_000, "in the future; the client's clock is off"),
    ],
    ids=["bool", "text", "nan", "negative", "zero", "future"],
)
def test_sent_at_rejects(value, match):
    with pytest.raises(RequestError, match=f"'{SENT_AT_PARAM}' {match}" if "future" not in match else match):
        parse_parameters({SENT_AT_PARAM: value}, DEFAULT_BUDGET, now_unix_ms=NOW_MS)


@pytest.mark.parametrize("default", [0.0, -1.0, float("nan"), float("inf")], ids=["zero", "neg", "nan", "inf"])
def test_parse_parameters_bad_default_is_a_config_error(default):
    with pytest.raises(ValueError, match="default_budget_ms"):
        parse_parameters(None, default)


# --- parse_top_k --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "top_k, n, default_k, expected",
    [
        (None, 100, 10, 10),
        (None, 4, 10, 4),
        (np.array([3], np.int32), 100, 10, 3),
        (np.array([1], np.int32), 100, 10, 1),
        (np.array([500], np.int32), 100, 10, 100),
        (np.array([100], np.int32), 100, 10, 100),
    ],
    ids=["default", "default-clipped", "given", "one", "clipped-to-n", "exactly-n"],
)
def test_parse_top_k(top_k, n, default_k, expected):
    assert parse_top_k(top_k, n, default_k) == expected


@pytest.mark.parametrize(
    "top_k, match",
    [
        (np.array([0], np.int32), r"'top_k' must be >= 1, got 0"),
        (np.array([-3], np.int32), r"'top_k' must be >= 1, got -3"),
        (np.array([1, 2], np.int32), r"'top_k' must have shape \[1\], got \[2\]"),
        (np.array([[5]], np.int32), r"'top_k' must have shape \[1\], got \[1, 1\]"),
        (np.array(5, np.int32), r"'top_k' must have shape \[1\], got \[\]"),
        (np.array([2.5], np.float32), r"'top_k' must be an integer"),
    ],
    ids=["zero", "negative", "two-values", "2-d", "scalar", "float"],
)
def test_parse_top_k_rejects(top_k, match):
    with pytest.raises(RequestError, match=match):
        parse_top_k(top_k, 100, 10)


# --- top_k_indices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scores, k, expected",
    [
        ([0.1, 0.9, 0.5], 2, [1, 2]),
        ([0.5, 0.9, 0.5, 0.5], 3, [1, 0, 2]),
        ([0.3, 0.3, 0.3], 2, [0, 1]),
        ([0.2, 0.8], 5, [1, 0]),
        ([0.2, 0.8], 0, []),
        ([0.2, np.nan, 0.8], 3, [2, 0, 1]),
    ],
    ids=["simple", "ties-by-index", "all-tied", "k-above-n", "k-zero", "nan-last"],
)
def test_top_k_indices_small(scores, k, expected):
    got = top_k_indices(np.array(scores, np.float32), k)
    np.testing.assert_array_equal(got, expected)


def _random_scores(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    if kind == "continuous":
        return rng.random(n, dtype=np.float32)
    if kind == "few-levels":  # heavy ties everywhere, including across the k-th boundary
        return rng.integers(0, 5, n).astype(np.float32) / 4
    if kind == "with-nan":
        s = rng.random(n).astype(np.float32)
        s[rng.random(n) < 0.3] = np.nan
        return s
    if kind == "mostly-nan":  # fewer non-NaN scores than k
        s = np.full(n, np.nan, np.float32)
        s[rng.choice(n, 3, replace=False)] = [0.5, 0.5, 0.1]
        return s
    if kind == "signed-zero":
        return rng.choice(np.array([-0.0, 0.0, 1.0, -1.0], np.float32), n)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["continuous", "few-levels", "with-nan", "mostly-nan", "signed-zero"])
@pytest.mark.parametrize(
    "n, k",
    [(10, 3), (200, 1), (200, 10), (1000, 37), (4096, 128), (300, 299)],
    ids=["tiny", "k1", "k10", "k37", "nmax", "k-near-n"],
)
def test_top_k_indices_matches_stable_argsort(kind, n, k):
    rng = np.random.default_rng(n * 1000 + k)
    for _ in range(5):
        scores = _random_scores(rng, kind, n)
        expected = np.argsort(-scores, kind="stable")[:k]
        np.testing.assert_array_equal(top_k_indices(scores, k), expected)


def test_top_k_indices_rejects():
    with pytest.raises(ValueError, match="1-D"):
        top_k_indices(np.zeros((2, 2), np.float32), 1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        top_k_indices(np.zeros(3, np.float32), -1)


# --- cascade_merge ------------------------------------------------------------------------------


def _rank(scores: np.ndarray) -> np.ndarray:
    return top_k_indices(scores, scores.shape[0])


@pytest.mark.parametrize(
    "light, heavy_top, top_idx, expected",
    [
        # rest already below min(heavy): kept unchanged (e = 0)
        ([0.9, 0.1, 0.8, 0.2], [0.7, 0.6], [0, 2], [0.7, 0.1, 0.6, 0.2]),
        # rest max 0.5 >= floor 0.3: halve once (0.5 * 2**-1 = 0.25 < 0.3, so e = 1)
        ([0.9, 0.5, 0.8, 0.25], [0.4, 0.3], [0, 2], [0.4, 0.25, 0.3, 0.125]),
        # heavy reorders the top M; rest equal to floor is pushed strictly below it
        ([0.9, 0.5, 0.8, 0.5], [0.5, 0.75], [0, 2], [0.5, 0.25, 0.75, 0.25]),
        # nothing re-scored: light unchanged
        ([0.3, 0.6], [], [], [0.3, 0.6]),
        # everything re-scored: heavy everywhere
        ([0.3, 0.6], [0.125, 0.5], [1, 0], [0.5, 0.125]),
        # heavy floor 0 (not representable below): shifted to floor - 1 - (max_rest - light)
        ([0.9, 0.5, 0.25], [0.0], [0], [0.0, -1.0, -1.25]),
    ],
    ids=["rest-below-kept", "power-of-two-scaling", "tie-at-floor", "m-zero", "m-equals-n", "zero-floor-shift"],
)
def test_cascade_merge_values(light, heavy_top, top_idx, expected):
    out = cascade_merge(np.array(light, np.float32), np.array(heavy_top, np.float32), np.array(top_idx, np.int64))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array(expected, np.float32))


@pytest.mark.parametrize("n, m", [(50, 5), (1000, 128), (300, 299)], ids=["small", "typical", "m-near-n"])
def test_cascade_merge_rank_properties(n, m):
    rng = np.random.default_rng(n + m)
    for _ in range(10):
        light = rng.random(n, dtype=np.float32)
        top_idx = top_k_indices(light, m)
        heavy_top = rng.random(m, dtype=np.float32) * 0.2  # heavy often far below light
        out = cascade_merge(light, heavy_top, top_idx)
        rest = np.setdiff1d(np.arange(n), top_idx)
        np.testing.assert_array_equal(out[top_idx], heavy_top)
        assert out[rest].max() < heavy_top.min()  # every re-scored candidate ranks first
        assert set(_rank(out)[:m]) == set(top_idx)
        np.testing.assert_array_equal(_rank(out[rest]), _rank(light[rest]))  # rest order kept exactly
        assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize(
    "light, heavy_top, top_idx, match",
    [
        ([0.1, 0.2], [0.5], [0, 1], "need light"),
        ([0.1, 0.2], [0.5], [2], "must lie in"),
        ([0.1, 0.2, 0.3], [0.5, 0.6], [1, 1], "must not repeat"),
    ],
    ids=["shape-mismatch", "index-out-of-range", "repeated-index"],
)
def test_cascade_merge_rejects(light, heavy_top, top_idx, match):
    with pytest.raises(ValueError, match=match):
        cascade_merge(np.array(light, np.float32), np.array(heavy_top, np.float32), np.array(top_idx))


# --- light_confidence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "light, k, expected",
    [
        # sorted 0.9 0.6 0.3 0.0: spacing 0.3, gap at k=1 0.3 -> 0.5
        ([0.0, 0.3, 0.6, 0.9], 1, 0.5),
        # clear break: gap 0.9 after k=1 of (1, 0.1, 0.05, 0): spacing 1/3 -> 0.9 / (0.9 + 1/3)
        ([1.0, 0.1, 0.05, 0.0], 1, 0.9 / (0.9 + 1 / 3)),
        ([0.5, 0.9, 0.5, 0.1], 2, 0.0),  # tie across the boundary
        ([0.4, 0.4, 0.4], 1, 0.0),  # all equal
        ([0.2, 0.7], 2, 1.0),  # k == n: everything returned
        ([0.2, 0.7], 5, 1.0),  # k > n
        ([0.2, np.nan, 0.7], 1, 0.0),  # non-finite: no confidence
    ],
    ids=["uniform", "clear-break", "tie-at-boundary", "all-equal", "k-equals-n", "k-above-n", "nan"],
)
def test_light_confidence(light, k, expected):
    assert light_confidence(np.array(light, np.float64), k) == pytest.approx(expected)


def test_light_confidence_grows_with_the_gap_and_stays_in_unit_interval():
    rng = np.random.default_rng(0)
    base = np.sort(rng.random(100))[::-1].copy()  # descending
    confs = []
    for shift in [0.0, 0.1, 1.0, 10.0]:
        s = base.copy()
        s[:10] += shift  # widen the gap after the top 10
        confs.append(light_confidence(s, 10))
    assert all(0 <= c <= 1 for c in confs)
    assert confs == sorted(confs) and confs[-1] > 0.9


def test_light_confidence_rejects():
    with pytest.raises(ValueError, match="k must be >= 1"):
        light_confidence(np.zeros(3), 0)
    with pytest.raises(ValueError, match="1-D"):
        light_confidence(np.zeros((3, 1)), 1)
