"""Property-based tests of the public request contract against the real server.

Hypothesis draws whole requests to ``adaptive_ranking``: every input with a random
dtype (mostly the right one), rank, sizes and values (negative, huge, NaN / inf for
floats, empty and odd bytes), inputs left out or unknown ones added, and random
request parameters (unknown routes, budgets that are NaN, infinite, negative,
empty strings, booleans). The oracle is the contract itself, in Python:
``validate_inputs`` + ``parse_parameters`` + ``parse_top_k`` decide whether the
request is valid.

- valid: the server answers, with K results, N finite scores and a known route;
  on a fixed route the answer equals the in-process composition's.
- invalid: the server answers INVALID_ARG (never a crash, never a hang: each call
  has a deadline) and the message names an input or parameter of the request.

Triton checks dtypes, ranks, fixed dims and input names; the models check what
Triton cannot (N / L agreement and limits, negative ids, parameters, top_k). After
the fuzzing, a fixed reference request must still get the bit-identical answer it
got before, on every route: no malformed request changed the server's state.

Kept short for CI: ``max_examples`` below, no example database.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.ranking_client import MODEL_NAME, RankingRequest, infer
from serving.contract import ADAPTIVE_RANKING, REQUEST_PARAMETERS, ROUTES, RequestError, as_request, validate_inputs
from serving.inprocess import InProcessRanker
from serving.request import parse_parameters, parse_top_k
from serving.server.launcher import REPO_ROOT

MAX_EXAMPLES = 250
CALL_TIMEOUT_S = 30.0  # a hang fails the test instead of blocking it
DEFAULT_TOP_K, DEFAULT_BUDGET_MS = 10, 100.0  # the ranker's config (tests/test_serving.py checks them)
FIXED_ROUTES = ("light", "heavy", "cascade")
NAMES = (*ADAPTIVE_RANKING.input_names, *REQUEST_PARAMETERS, "bogus")

# Triton 2.51 counts an ensemble's inputs (4 required + optional top_k) but does not check
# which: a request with top_k and without a required input passes the count and the
# ensemble stops with this INVALID_ARG message, which names no input. Found by this test;
# nothing in the model repository can intercept it (the first step never runs).
ENSEMBLE_DEADLOCK = "unexpected deadlock, at least one output is not set"

# Triton dtype name -> numpy dtype, the contract's dtypes first (drawn more often).
DTYPES: dict[str, Any] = {
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "FP64": np.float64,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "BOOL": np.bool_,
    "BYTES": np.object_,
}
_FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _values(draw: st.DrawFn, dtype_name: str, shape: tuple[int, ...], chaos: bool = True) -> np.ndarray:
    size = int(np.prod(shape, dtype=np.int64))
    dtype = DTYPES[dtype_name]
    if dtype_name == "BYTES":
        items = draw(st.lists(st.binary(max_size=4), min_size=size, max_size=size))
        return np.array(items + [b""], dtype=np.object_)[:size].reshape(shape)
    if dtype_name == "BOOL":
        return np.array(draw(st.lists(st.booleans(), min_size=size, max_size=size)), dtype=bool).reshape(shape)
    if dtype_name.startswith("FP"):
        elements = st.floats(width=32 if dtype_name == "FP32" else 64, allow_nan=True, allow_infinity=True)
        return np.array(draw(st.lists(elements, min_size=size, max_size=size)), dtype=dtype).reshape(shape)
    info = np.iinfo(dtype)
    kind = draw(st.sampled_from(["ids"] * 10 + ["any", "negative", "huge"])) if chaos else "ids"
    if kind == "negative" and info.min == 0:
        kind = "any"
    if kind == "ids":
        lo, hi = 0, min(int(info.max), 1000)
    elif kind == "negative":
        lo, hi = int(info.min), -1
    elif kind == "huge":
        lo, hi = int(info.max) - 1000, int(info.max)
    else:
        lo, hi = int(info.min), int(info.max)
    items = draw(st.lists(st.integers(lo, hi), min_size=size, max_size=size))
    # Mostly valid ids: a negative or huge run gets only one slot, so both valid and invalid requests occur.
    if items and kind in ("negative", "huge") and draw(st.booleans()):
        items = [min(max(v, 0), 1000) for v in items[:-1]] + items[-1:]
    return np.array(items, dtype=dtype).reshape(shape)


@st.composite
def requests(draw: st.DrawFn) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(arrays, parameters) of one request to adaptive_ranking, valid or not.

    Half the examples are "chaos" (anything may break); the others only vary sizes and
    values inside the contract (the oracle still decides: N or L may be 0)."""
    chaos = draw(st.booleans())
    sizes = {"N": draw(st.sampled_from(range(-1, 13))), "L": draw(st.sampled_from(range(-1, 9)))}
    sizes = {k: max(v, 0) for k, v in sizes.items()}  # 0 (an empty tensor) one draw in about 7
    arrays: dict[str, np.ndarray] = {}
    for spec in ADAPTIVE_RANKING.inputs:
        presence = (
            draw(st.sampled_from(["normal"] * 30 + ["missing", "wrong-dtype", "wrong-shape"])) if chaos else "normal"
        )
        if presence == "missing" or (spec.optional and draw(st.booleans())):
            continue
        dims = [sizes[d] if isinstance(d, str) else d for d in spec.dims]
        if presence == "wrong-shape":
            dims = draw(st.lists(st.integers(0, 6), min_size=0, max_size=3))
        dtype_name = spec.dtype
        if presence == "wrong-dtype":
            dtype_name = draw(st.sampled_from([d for d in DTYPES if d != spec.dtype]))
        if spec.name == "top_k" and dtype_name == "INT32" and presence == "normal":
            arrays[spec.name] = np.array([[draw(st.integers(-3, 20))]], dtype=np.int32)  # (1, 1)
            continue
        arrays[spec.name] = _values(draw, dtype_name, tuple(dims), chaos)
    if chaos and draw(st.integers(0, 15)) == 0:
        arrays["bogus"] = np.zeros(2, dtype=np.int64)
    params: dict[str, Any] = {}
    route = draw(st.sampled_from([*ROUTES, *ROUTES, None, "", "fastest", "HEAVY", 3] if chaos else [*ROUTES, None]))
    if route is not None:
        params["route"] = route
    budget = draw(
        st.one_of(st.none(), st.floats(min_value=1.0, max_value=1e6))
        if not chaos
        else st.one_of(
            st.none(),
            st.floats(min_value=1.0, max_value=1e6),
            st.floats(allow_nan=True, allow_infinity=True),
            st.integers(-10, 10**6),
            st.sampled_from(["", "fast", "nan", "inf", "-1", "250", " "]),
            st.booleans(),
        )
    )
    if budget is not None:
        params["latency_budget_ms"] = budget
    return arrays, params


def missing_required(arrays: dict[str, np.ndarray]) -> bool:
    return any(not spec.optional and spec.name not in arrays for spec in ADAPTIVE_RANKING.inputs)


def contract_verdict(arrays: dict[str, np.ndarray], params: dict[str, Any]) -> tuple[bool, str]:
    """(valid, route requested) by the contract; the oracle of the server's answer."""
    if set(arrays) - set(ADAPTIVE_RANKING.input_names):
        return False, ""
    try:
        sizes = validate_inputs(ADAPTIVE_RANKING, arrays)
        options = parse_parameters(params, DEFAULT_BUDGET_MS)
        parse_top_k(arrays["top_k"][0] if "top_k" in arrays else None, sizes["N"], DEFAULT_TOP_K)
    except RequestError:
        return False, ""
    return True, options.route


def send(client: grpcclient.InferenceServerClient, arrays: dict[str, np.ndarray], params: dict[str, Any]) -> Any:
    inputs = []
    for name, array in arrays.items():
        dtype = next(k for k, v in DTYPES.items() if np.dtype(v) == array.dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in ADAPTIVE_RANKING.output_names]
    return client.infer(MODEL_NAME, inputs, outputs=outputs, parameters=params or None, client_timeout=CALL_TIMEOUT_S)


def reference_answers(client: grpcclient.InferenceServerClient) -> dict[str, tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(42)
    request = RankingRequest(
        np.array([5, 1, 2, 0], dtype=np.int64),
        rng.integers(0, 500, 20).astype(np.int64),
        rng.integers(0, 500, 300).astype(np.int64),
        rng.integers(0, 6, (300, 3)).astype(np.int64),
    )
    out = {}
    for route in FIXED_ROUTES:
        result = infer(client, request, route=route, top_k=15)
        out[route] = (result.top_ids, result.top_scores, result.scores)
    return out


@pytest.fixture(scope="module")
def ranker() -> InProcessRanker:
    return InProcessRanker(REPO_ROOT / "model_repository")


@pytest.fixture(scope="module")
def reference_before(grpc_client: grpcclient.InferenceServerClient) -> dict[str, tuple[np.ndarray, ...]]:
    return reference_answers(grpc_client)


@_FUZZ_SETTINGS
@given(request=requests())
def test_random_requests_follow_the_contract(grpc_client, ranker, reference_before, request):
    arrays, params = request
    valid, route = contract_verdict(arrays, params)
    event("valid" if valid else "invalid")
    if not valid:
        with pytest.raises(InferenceServerException) as info:
            send(grpc_client, arrays, params)
        error = info.value
        assert "INVALID_ARG" in str(error.status()), f"{error.status()}: {error.message()}"
        if missing_required(arrays) and "top_k" in arrays and ENSEMBLE_DEADLOCK in error.message():
            return  # Triton 2.51's known limitation, see ENSEMBLE_DEADLOCK
        assert any(name in error.message() for name in NAMES), error.message()
        return
    response = send(grpc_client, arrays, params)
    n = arrays["candidate_ids"].shape[1]  # (1, N): one user
    k = parse_top_k(arrays["top_k"][0] if "top_k" in arrays else None, n, DEFAULT_TOP_K)
    served_route = response.as_numpy("route")[0, 0].decode()
    scores, top_ids = response.as_numpy("scores")[0], response.as_numpy("top_ids")[0]
    assert served_route in FIXED_ROUTES
    assert scores.shape == (n,) and top_ids.shape == (k,)
    assert np.all(np.isfinite(scores))
    if route in FIXED_ROUTES:
        # A cascade whose heavy stage misses the request's budget answers with light (the fallback).
        assert served_route == route or (route == "cascade" and served_route == "light")
        want = ranker.rank(arrays, served_route, k)
        np.testing.assert_allclose(scores, want.scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(top_ids, want.top_ids)


def test_server_unchanged_after_fuzzing(grpc_client, reference_before):
    """Runs after the fuzz test (file order): the server is ready and answers the reference bit for bit."""
    assert grpc_client.is_server_live() and grpc_client.is_model_ready(MODEL_NAME)
    after = reference_answers(grpc_client)
    for route, arrays in reference_before.items():
        for got, want in zip(after[route], arrays, strict=True):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "params, name",
    [
        ({"route": ""}, "route"),
        ({"latency_budget_ms": ""}, "latency_budget_ms"),
        ({"latency_budget_ms": "nan"}, "latency_budget_ms"),
        ({"latency_budget_ms": float("inf")}, "latency_budget_ms"),
        ({"latency_budget_ms": True}, "latency_budget_ms"),
    ],
    ids=["empty-route", "empty-budget", "nan-budget-string", "inf-budget", "bool-budget"],
)
def test_values_triton_does_not_check_are_checked_by_the_models(grpc_client, params, name):
    rng = np.random.default_rng(1)
    arrays = as_request(
        {
            "user_features": np.array([1, 2, 3, 0], dtype=np.int64),
            "history_ids": rng.integers(0, 100, 4).astype(np.int64),
            "candidate_ids": rng.integers(0, 100, 6).astype(np.int64),
            "candidate_features": rng.integers(0, 5, (6, 3)).astype(np.int64),
        }
    )
    with pytest.raises(InferenceServerException, match=name) as info:
        send(grpc_client, arrays, params)
    assert "INVALID_ARG" in str(info.value.status())


# --- NaN / Inf in the float inputs of the models behind the ensemble --------------------------------

RTOL, ATOL = 1e-5, 1e-6  # served vs in-process: micro-batches may change the rounding (test_serving.py)


def grpc_infer(
    client: grpcclient.InferenceServerClient, model: str, arrays: dict[str, np.ndarray], **params: Any
) -> Any:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs, parameters=params or None, client_timeout=CALL_TIMEOUT_S)


@pytest.fixture(scope="module")
def float_inputs(ranker: InProcessRanker) -> dict[str, dict[str, np.ndarray]]:
    """Valid inputs of scorer_light, scorer_heavy and the ranker for one request (in-process tower)."""
    rng = np.random.default_rng(7)
    request = RankingRequest(
        np.array([9, 1, 2, 0], dtype=np.int64),
        rng.integers(0, 500, 10).astype(np.int64),
        rng.integers(0, 500, 60).astype(np.int64),
        rng.integers(0, 6, (60, 3)).astype(np.int64),
    )
    chain = ranker.chain(request.arrays())
    return {
        "scorer_light": chain.scorer_inputs("light"),
        "scorer_heavy": chain.scorer_inputs("heavy"),
        "ranker": chain.ranker_inputs(),
        "public": request.arrays(),
    }


def poisoned(arrays: dict[str, np.ndarray], name: str, value: float, count: int) -> dict[str, np.ndarray]:
    bad = {k: v.copy() for k, v in arrays.items()}
    bad[name].reshape(-1)[:: max(1, bad[name].size // count)][:count] = value
    return bad


@pytest.mark.parametrize(
    "model, name, value",
    [
        ("scorer_light", "candidate_emb", np.nan),
        ("scorer_light", "user_state", np.inf),
        ("scorer_heavy", "history_kv", -np.inf),
        ("ranker", "candidate_emb", np.nan),
        ("ranker", "user_state", np.nan),
        ("ranker", "history_kv", np.inf),
    ],
    ids=["light-emb-nan", "light-state-inf", "heavy-kv-neginf", "ranker-emb-nan", "ranker-state-nan", "ranker-kv-inf"],
)
def test_non_finite_float_input_is_invalid_argument(grpc_client, ranker, float_inputs, model, name, value):
    """A NaN / Inf reaches the model (Triton does not look at values): INVALID_ARG naming the input and
    the count, then the same model answers the clean request correctly."""
    arrays = float_inputs[model]
    params = {"route": "light"} if model == "ranker" else {}
    with pytest.raises(InferenceServerException) as info:
        grpc_infer(grpc_client, model, poisoned(arrays, name, value, 3), **params)
    assert "INVALID_ARG" in str(info.value.status()), info.value
    assert f"input '{name}' has 3 NaN/Inf values; values must be finite" in info.value.message()
    response = grpc_infer(grpc_client, model, arrays, **params)
    if model == "ranker":
        want = ranker.rank(float_inputs["public"], "light", DEFAULT_TOP_K)
        np.testing.assert_allclose(response.as_numpy("scores")[0], want.scores, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(response.as_numpy("top_ids")[0], want.top_ids)
    else:
        want = ranker.run(model, arrays)["scores"]
        np.testing.assert_allclose(response.as_numpy("scores"), want, rtol=RTOL, atol=ATOL)


# --- HTTP fuzzing (in the style of Triton's qa/L0_http_fuzz) ----------------------------------------
#
# Raw bytes to the HTTP port: broken framing, broken JSON, binary-data lengths that do not match
# the body, huge or overflowing shapes, wrong datatypes, bad parameters, unknown models and routes,
# then a seeded byte-level mutation of a valid request. Each answer must come within
# HTTP_TIMEOUT_S, be the answer pinned below (2.51's, found by this test), and the server must
# answer a valid request bit for bit as before. Two malformed requests crash 2.51 and are not sent
# to the session server: a JSON shape whose byte size overflows (the server aborts) and a shape
# whose byte size wraps to 0 with no data (the model's stub dies); tests/test_faults.py sends
# them to a supervised server.

HTTP_TIMEOUT_S = 5.0
INFER_PATH = f"/v2/models/{MODEL_NAME}/infer"
CLOSED = None  # the server closed the connection without an answer (malformed framing)
# 2.51 maps JSON it cannot parse to INTERNAL, so HTTP 500 with an error body, not 400
# (upstream: triton-inference-server/server#8762).
JSON_500 = 500


def http_exchange(host: str, port: int, data: bytes) -> tuple[int | None, bytes, float]:
    """Send ``data``, half-close, read until the server closes: (status or None, body, seconds)."""
    start = time.monotonic()
    chunks = []
    with socket.create_connection((host, port), timeout=HTTP_TIMEOUT_S) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise
        except OSError:
            pass  # the server answered and closed before reading it all (EPIPE, ENOTCONN, reset)
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass  # e.g. headers over evhtp's limit: refused by a reset, an answer of its own
    raw = b"".join(chunks)
    elapsed = time.monotonic() - start
    if not raw:
        return None, b"", elapsed
    head, _, body = raw.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, f"not an HTTP answer: {raw[:200]!r}"
    return int(match[1]), body, elapsed


def http_post(path: str, body: bytes, headers: dict[str, str] | None = None, length: int | str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: fuzz", "Content-Type: application/json", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def http_get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n".encode()


def _json_inputs(n: int = 6) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    return [
        {"name": "user_features", "shape": [1, 4], "datatype": "INT64", "data": [3, 1, 2, 0]},
        {"name": "history_ids", "shape": [1, 5], "datatype": "INT64", "data": rng.integers(0, 500, 5).tolist()},
        {"name": "candidate_ids", "shape": [1, n], "datatype": "INT64", "data": rng.integers(0, 500, n).tolist()},
        {"name": "candidate_features", "shape": [1, n, 3], "datatype": "INT64", "data": [1, 2, 3] * n},
    ]


def json_request(replace: dict[str, Any] | None = None, parameters: Any = None, **top: Any) -> bytes:
    """A valid JSON infer request with ``replace``'s inputs (by name) swapped in."""
    inputs = [dict((replace or {}).get(i["name"], i)) for i in _json_inputs()]
    body = {"inputs": inputs, "parameters": {"route": "light"} if parameters is None else parameters, **top}
    return json.dumps(body).encode()


def binary_request(ids: np.ndarray, shape: list[int], size: int, header_length: int | str | None = None) -> bytes:
    """candidate_ids as binary data after the JSON header (Inference-Header-Content-Length)."""
    spec = {"name": "candidate_ids", "shape": shape, "datatype": "INT64", "parameters": {"binary_data_size": size}}
    header = json_request({"candidate_ids": spec})
    length = len(header) if header_length is None else header_length
    return http_post(INFER_PATH, header + ids.tobytes(), {"Inference-Header-Content-Length": str(length)})


def _candidate_ids(**changes: Any) -> dict[str, Any]:
    return {"candidate_ids": {**_json_inputs()[2], **changes}}


IDS6 = np.arange(6, dtype=np.int64)
VALID_JSON = json_request()
# name -> (request bytes, expected status (CLOSED: no answer), regex the error body must match)
HTTP_CASES: dict[str, tuple[bytes, int | None, str]] = {
    "json-truncated": (http_post(INFER_PATH, VALID_JSON[:40]), JSON_500, "failed to parse the request JSON"),
    "json-not-json": (http_post(INFER_PATH, b"\x00\xff\xfe not json"), JSON_500, "failed to parse the request JSON"),
    # No JSON header at all: taken for a raw binary request, which only single-input models accept.
    "json-empty-body": (http_post(INFER_PATH, b""), 400, "Raw request must only have 1 input"),
    "json-deep-nesting": (http_post(INFER_PATH, b"[" * 50_000 + b"]" * 50_000), JSON_500, "inputs"),
    "content-length-short": (http_post(INFER_PATH, VALID_JSON, length=25), JSON_500, "failed to parse"),
    "content-length-long": (http_post(INFER_PATH, VALID_JSON, length=len(VALID_JSON) + 100), CLOSED, ""),
    "content-length-negative": (http_post(INFER_PATH, VALID_JSON, length=-5), CLOSED, ""),
    "content-length-not-a-number": (http_post(INFER_PATH, VALID_JSON, length="ten"), CLOSED, ""),
    "not-http": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n", CLOSED, ""),
    "header-too-large": (http_get("/v2/health/ready")[:-2] + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n", CLOSED, ""),
    "unknown-method": (b"BREW /v2 HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n", 405, "Method Not Allowed"),
    "unknown-route": (http_get("/v2/no/such/route"), 404, "Not Found"),
    "path-traversal": (http_post("/v2/models/../../etc/passwd/infer", VALID_JSON), 404, "Not Found"),
    "unknown-model": (http_post("/v2/models/nope/infer", VALID_JSON), 404, "unknown model"),
    "unknown-version": (http_post(f"/v2/models/{MODEL_NAME}/versions/99/infer", VALID_JSON), 404, "version 99"),
    # 1000 characters: at 5000, 2.51 answers 404 or 405 ("Method Not Allowed") from one request to the next.
    "long-model-name": (http_post(f"/v2/models/{'m' * 1000}/infer", VALID_JSON), 404, "unknown model"),
    "binary-header-length-past-body": (binary_request(IDS6, [1, 6], 48, 10_000), 400, "inference header size"),
    "binary-header-length-negative": (binary_request(IDS6, [1, 6], 48, -1), 400, "inference header size"),
    "binary-header-length-inside-json": (binary_request(IDS6, [1, 6], 48, 30), JSON_500, "failed to parse"),
    "binary-size-past-body": (binary_request(IDS6, [1, 6], 96), 400, "candidate_ids.*expecting 48 additional"),
    "binary-size-short-of-body": (binary_request(IDS6, [1, 6], 16), 400, "unexpected additional input data"),
    "binary-size-huge": (binary_request(IDS6, [1, 6], 2**62), 400, "candidate_ids"),
    "binary-shape-huge": (binary_request(IDS6, [1, 2**40], 48), 400, "byte size mismatch for input 'candidate_ids'"),
    "shape-product-overflows": (
        http_post(INFER_PATH, json_request(_candidate_ids(shape=[2**32, 2**32]))),
        400,
        "unexpected shape for input 'candidate_ids'",
    ),
    # Checked after allocating 8 bytes per declared element: 2**20 costs 8 MiB, 2**40 aborts (test_faults.py).
    "shape-larger-than-data": (
        http_post(INFER_PATH, json_request(_candidate_ids(shape=[1, 2**20]))),
        JSON_500,
        "Shape does not match true shape of 'data'",
    ),
    "shape-negative": (http_post(INFER_PATH, json_request(_candidate_ids(shape=[1, -6]))), JSON_500, "shape"),
    "shape-string": (http_post(INFER_PATH, json_request(_candidate_ids(shape=[1, "6"]))), JSON_500, "shape"),
    "datatype-wrong": (
        http_post(INFER_PATH, json_request(_candidate_ids(datatype="FP32", data=[1.5] * 6))),
        400,
        "candidate_ids.*FP32.*INT64",
    ),
    "datatype-unknown": (
        http_post(INFER_PATH, json_request(_candidate_ids(datatype="INT65"))),
        400,
        "invalid datatype for input candidate_ids",
    ),
    "data-strings": (http_post(INFER_PATH, json_request(_candidate_ids(data=["a"] * 6))), JSON_500, "data"),
    "data-too-short": (http_post(INFER_PATH, json_request(_candidate_ids(data=[1, 2]))), JSON_500, "data"),
    "data-overflows-int64": (
        http_post(INFER_PATH, json_request(_candidate_ids(data=[2**64] + [1] * 5))),
        JSON_500,
        "data",
    ),
    "negative-id": (
        http_post(INFER_PATH, json_request(_candidate_ids(data=[-1] * 6))),
        400,
        "candidate_ids.*negative",
    ),
    "budget-string": (
        http_post(INFER_PATH, json_request(parameters={"route": "auto", "latency_budget_ms": "fast"})),
        400,
        "latency_budget_ms",
    ),
    "budget-negative": (
        http_post(INFER_PATH, json_request(parameters={"route": "auto", "latency_budget_ms": -5})),
        400,
        "latency_budget_ms",
    ),
    "route-number": (http_post(INFER_PATH, json_request(parameters={"route": 7})), 400, "route"),
    "route-unknown": (http_post(INFER_PATH, json_request(parameters={"route": "fastest"})), 400, "route"),
    "parameter-object": (
        http_post(INFER_PATH, json_request(parameters={"route": {"nested": 1}})),
        400,
        "parameter 'route' has invalid type",
    ),
    "parameters-not-object": (http_post(INFER_PATH, json_request(parameters=[1, 2])), JSON_500, "params"),
    "inputs-not-list": (http_post(INFER_PATH, b'{"inputs": {"a": 1}}'), JSON_500, "inputs"),
    "inputs-missing": (http_post(INFER_PATH, b"{}"), JSON_500, "inputs"),
    "input-unknown": (
        http_post(
            INFER_PATH, json.dumps({"inputs": _json_inputs() + [{**_json_inputs()[0], "name": "bogus"}]}).encode()
        ),
        400,
        "unexpected inference input 'bogus'",
    ),
    "input-duplicated": (
        http_post(INFER_PATH, json.dumps({"inputs": _json_inputs() + _json_inputs()[2:3]}).encode()),
        400,
        "'candidate_ids' already exists",
    ),
    "output-unknown": (http_post(INFER_PATH, json_request(outputs=[{"name": "nope"}])), 400, "output 'nope'"),
}


def error_message(body: bytes) -> str:
    """The "error" of an error answer; Triton echoes request bytes into it unescaped (not always UTF-8)."""
    return json.loads(body.decode("utf-8", errors="replace"))["error"]


def answer_mismatch(status: int | None, body: bytes, elapsed: float, want: int | None, pattern: str) -> str | None:
    """Why an answer is not the one expected (None: it is)."""
    if elapsed >= HTTP_TIMEOUT_S:
        return f"no answer within {HTTP_TIMEOUT_S} s"
    if status != want:
        return f"HTTP {status}, expected {want}: {body[:300]!r}"
    if want is not None and not re.search(pattern, error := error_message(body)):
        return f"{error!r} does not match {pattern!r}"
    return None


def valid_http_answer(host: str, port: int) -> dict[str, Any]:
    status, body, _ = http_exchange(host, port, http_post(INFER_PATH, VALID_JSON))
    assert status == 200, body[:300]
    return {o["name"]: o["data"] for o in json.loads(body)["outputs"]}


def mutations(seed: int, count: int) -> Iterator[bytes]:
    """Byte-level mutations of the valid request (body and headers): flips, cuts, repeats, inserts."""
    rng = np.random.default_rng(seed)
    base = http_post(INFER_PATH, VALID_JSON)
    for _ in range(count):
        data = bytearray(base)
        for _ in range(int(rng.integers(1, 4))):
            at = int(rng.integers(0, len(data)))
            kind = rng.integers(0, 4)
            if kind == 0:
                data[at] = int(rng.integers(0, 256))
            elif kind == 1:
                del data[at : at + int(rng.integers(1, 40))]
            elif kind == 2:
                data[at:at] = data[at : at + int(rng.integers(1, 40))]
            else:
                data[at:at] = bytes(rng.choice(list(b'{}[]",:0123456789-e.nul'), int(rng.integers(1, 8))))
        yield bytes(data)


def test_http_fuzz(triton_server, grpc_client, reference_before):
    host, port = triton_server.http_url.rsplit(":", 1)
    before = valid_http_answer(host, int(port))
    wrong = {}
    for name, (data, want, pattern) in HTTP_CASES.items():
        if (why := answer_mismatch(*http_exchange(host, int(port), data), want, pattern)) is not None:
            wrong[name] = why
    assert not wrong, "\n".join(f"{name}: {why}" for name, why in wrong.items())
    seen: dict[int | None, int] = {}
    for data in mutations(seed=6, count=1000):
        status, body, elapsed = http_exchange(host, int(port), data)
        assert elapsed < HTTP_TIMEOUT_S, f"no answer within {HTTP_TIMEOUT_S} s to {data[:300]!r}"
        assert status in (None, 200, JSON_500) or 400 <= status < 500, f"HTTP {status} to {data[:300]!r}"
        if status is not None and status != 200:
            assert error_message(body), body[:300]
        seen[status] = seen.get(status, 0) + 1
    print(f"mutated requests by answer: {dict(sorted(seen.items(), key=str))}")
    assert triton_server.process.poll() is None and grpc_client.is_server_ready()
    assert valid_http_answer(host, int(port)) == before
    after = reference_answers(grpc_client)
    for route, arrays in reference_before.items():
        for got, want in zip(after[route], arrays, strict=True):
            np.testing.assert_array_equal(got, want)
