"""The served ensemble against the same composition computed in-process.

The real Triton server (tests/conftest.py) serves ``adaptive_ranking`` from the
project's model repository; ``serving.inprocess.InProcessRanker`` runs the same ONNX
files directly. Every served answer is compared with the in-process one of the
route the server reports, so these tests check the ensemble wiring, the ranker's
broadcast / micro-batching / cascade / top-K, request validation, concurrency,
both protocols and the custom metrics, with no mocks.

Tolerance of served vs in-process scores: ``RTOL`` / ``ATOL`` below. The models
and the FP32 arithmetic are identical, but the server scores the candidates in
calls of the ranker's CallPlan, several requests' candidates together (separate ONNX Runtime
calls with other GEMM shapes, hence possibly another summation blocking), while
in-process scores all N of one request in one call: results may differ by rounding only.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from client.ranking_client import MODEL_NAME, RankingRequest, infer
from export.config import PRESETS
from export.world import World, make_world
from serving.arrays import top_k_indices
from serving.contract import ADAPTIVE_RANKING, L_MAX, N_MAX, RankingResult, as_request
from serving.inprocess import InProcessRanker
from serving.ranker import RankerConfig
from serving.routing import RoutePolicy
from serving.server.launcher import REPO_ROOT

REPOSITORY = REPO_ROOT / "model_repository"
CONFIG_NAME = "cpu"  # the profile conftest.py serves
FIXED_ROUTES = ("light", "heavy", "cascade")
RTOL, ATOL = 1e-5, 1e-6  # see the module docstring


def served_config(model: str) -> model_config_pb2.ModelConfig:
    """The config Triton loads for ``model``: configs/<CONFIG_NAME>.pbtxt if present, else config.pbtxt."""
    path = REPOSITORY / model / "configs" / f"{CONFIG_NAME}.pbtxt"
    if not path.is_file():
        path = REPOSITORY / model / "config.pbtxt"
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


RANKER_PARAMS = {k: v.string_value for k, v in served_config("ranker").parameters.items()}
CASCADE_M = int(RANKER_PARAMS["cascade_m"])
CALLS = RankerConfig.from_parameters(RANKER_PARAMS).calls  # how the ranker splits a tier's candidates
DEFAULT_TOP_K = int(RANKER_PARAMS["default_top_k"])
N_LARGE = 1500  # several concurrent scorer calls per tier (checked in test_config_assumptions)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(PRESETS["tiny"].world)


@pytest.fixture(scope="module")
def ranker() -> InProcessRanker:
    return InProcessRanker(REPOSITORY, policy=RoutePolicy(cascade_m=CASCADE_M))


def world_request(world: World, n: int, seed: int, row: int = 0) -> RankingRequest:
    return RankingRequest.from_requests(world.sample_requests(row + 1, n, seed), row)


def expected(ranker: InProcessRanker, request: RankingRequest, route: str, top_k: int | None = None) -> RankingResult:
    k = DEFAULT_TOP_K if top_k is None else top_k
    return ranker.rank(request.arrays(), route, k)


def assert_same(served: RankingResult, want: RankingResult) -> None:
    """Served equals in-process: same route, same top ids, scores within RTOL / ATOL."""
    assert served.route == want.route
    assert served.scores.shape == want.scores.shape
    np.testing.assert_allclose(served.scores, want.scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(served.top_ids, want.top_ids)
    np.testing.assert_allclose(served.top_scores, want.top_scores, rtol=RTOL, atol=ATOL)


def test_config_assumptions():
    assert len(CALLS.call_sizes(N_LARGE)) > 1
    assert N_LARGE > max(CASCADE_M, DEFAULT_TOP_K)


# --- 1. served == in-process, per route -----------------------------------------------------------


@pytest.mark.parametrize("route", FIXED_ROUTES)
@pytest.mark.parametrize(
    "n, seed, top_k",
    [(64, 1, None), (200, 2, 5), (N_LARGE, 3, 20), (N_LARGE, 4, CASCADE_M + 10)],
    ids=["n64", "n200-k5", "n1500-k20", "n1500-k-above-m"],
)
def test_served_equals_inprocess(grpc_client, world, ranker, route, n, seed, top_k):
    request = world_request(world, n, seed)
    served = infer(grpc_client, request, route=route, top_k=top_k)
    assert_same(served, expected(ranker, request, route, top_k))
    assert served.top_ids.shape == (min(DEFAULT_TOP_K if top_k is None else top_k, n),)


# --- 2. cascade re-scores exactly light's top M ---------------------------------------------------


@pytest.mark.parametrize(
    "n, seed, top_k", [(400, 5, 10), (N_LARGE, 6, 10), (N_LARGE, 7, CASCADE_M + 50)], ids=["n400", "n1500", "k-above-m"]
)
def test_cascade_rescores_exactly_top_m(grpc_client, world, ranker, n, seed, top_k):
    request = world_request(world, n, seed)
    m = max(CASCADE_M, top_k)
    assert n > m
    chain = ranker.chain(request.arrays())
    light = ranker.score("light", chain, chain.candidate_emb)
    heavy = ranker.score("heavy", chain, chain.candidate_emb)  # every candidate, one call
    top = top_k_indices(light, m)
    rest = np.setdiff1d(np.arange(n), top)

    served_light = infer(grpc_client, request, route="light", top_k=top_k)
    cascade = infer(grpc_client, request, route="cascade", top_k=top_k)
    assert cascade.route == "cascade"
    np.testing.assert_allclose(served_light.scores, light, rtol=RTOL, atol=ATOL)
    # Light's top M carry their heavy scores, the other N - M rank strictly below all of them ...
    np.testing.assert_allclose(cascade.scores[top], heavy[top], rtol=RTOL, atol=ATOL)
    assert cascade.scores[rest].max() < cascade.scores[top].min()
    # ... and keep light's order: the served light scores scaled by one power of two.
    ratio = cascade.scores[rest] / served_light.scores[rest]
    assert np.all(ratio == ratio[0]) and np.log2(ratio[0]) == np.round(np.log2(ratio[0]))
    np.testing.assert_array_equal(
        np.argsort(-cascade.scores[rest], kind="stable"), np.argsort(-served_light.scores[rest], kind="stable")
    )


# --- 3. auto --------------------------------------------------------------------------------------


def warm_up(client: grpcclient.InferenceServerClient, world: World) -> None:
    """Enough timings of both tiers for the cost model to replace its priors (min_observations = 8)."""
    for seed in range(10):
        request = world_request(world, 64, 100 + seed)
        for route in ("light", "heavy"):
            infer(client, request, route=route)


@pytest.mark.parametrize("budget_ms", [None, 0.5, 2.0, 10.0, 100.0], ids=["default", "0.5ms", "2ms", "10ms", "100ms"])
@pytest.mark.parametrize("n", [64, N_LARGE], ids=["n64", "n1500"])
def test_auto_route_equals_inprocess_of_that_route(grpc_client, world, ranker, budget_ms, n):
    request = world_request(world, n, 8)
    served = infer(grpc_client, request, route="auto", latency_budget_ms=budget_ms)
    assert served.route in FIXED_ROUTES
    assert_same(served, expected(ranker, request, served.route))


@pytest.mark.parametrize("budget_ms, route", [(10_000.0, "heavy"), (0.001, "light")], ids=["generous", "tiny"])
def test_auto_follows_budget(grpc_client, world, ranker, budget_ms, route):
    warm_up(grpc_client, world)
    request = world_request(world, 64, 9)
    served = infer(grpc_client, request, route="auto", latency_budget_ms=budget_ms)
    assert served.route == route
    assert_same(served, expected(ranker, request, route))


def raw_inputs(arrays: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    """gRPC inputs for ``arrays`` exactly as they are (dtype and shape unchecked by the client)."""
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def infer_sent_at(client: grpcclient.InferenceServerClient, request: RankingRequest, route: str, **params: float):
    """``request`` with raw parameters (the client's stamp chosen by the test); returns (result, seconds)."""
    inputs = raw_inputs(request.arrays())
    outputs = [grpcclient.InferRequestedOutput(name) for name in ADAPTIVE_RANKING.output_names]
    start = time.perf_counter()
    response = client.infer(MODEL_NAME, inputs, outputs=outputs, parameters={"route": route, **params})
    return response, time.perf_counter() - start


def test_budget_counts_from_the_clients_send_time(grpc_client, world, ranker):
    """A request stamped 10 s ago with a 100 ms budget has nothing left: auto answers light and a
    cascade does not wait for heavy; the same request stamped now gets heavy / cascade."""
    warm_up(grpc_client, world)
    request = world_request(world, 300, 23)
    now = time.time() * 1e3
    fresh, _ = infer_sent_at(grpc_client, request, "auto", latency_budget_ms=10_000.0, sent_at_unix_ms=now)
    assert fresh.as_numpy("route")[0, 0] == b"heavy"
    for route in ("auto", "cascade"):
        stale, seconds = infer_sent_at(
            grpc_client, request, route, latency_budget_ms=100.0, sent_at_unix_ms=time.time() * 1e3 - 10_000
        )
        assert stale.as_numpy("route")[0, 0] == b"light", route
        np.testing.assert_array_equal(stale.as_numpy("top_ids")[0], expected(ranker, request, "light").top_ids)
        assert seconds < 1.0


# --- 4. edge cases --------------------------------------------------------------------------------


def with_history(request: RankingRequest, length: int) -> RankingRequest:
    """``request`` with a history of exactly ``length`` ids (its own history repeated / cut)."""
    return RankingRequest(
        request.user_features,
        np.resize(request.history_ids, length),
        request.candidate_ids,
        request.candidate_features,
    )


def duplicates(world: World) -> RankingRequest:
    base = world_request(world, 1, 12)
    n = 40
    return RankingRequest(
        base.user_features,
        base.history_ids,
        np.repeat(base.candidate_ids, n),
        np.repeat(base.candidate_features, n, axis=0),
    )


def huge_ids(world: World) -> RankingRequest:
    base = world_request(world, 32, 13)
    huge = 2**62
    user = base.user_features.copy()
    user[0] = huge
    history = base.history_ids.copy()
    history[-1] = huge + 7
    cand_ids = base.candidate_ids.copy()
    cand_ids[::3] = huge + np.arange(cand_ids[::3].size)
    features = base.candidate_features.copy()
    features[::2] = np.iinfo(np.int64).max - np.arange(features[::2].shape[0])[:, None]
    return RankingRequest(user, history, cand_ids, features)


@dataclass(frozen=True)
class Edge:
    build: Callable[[World], RankingRequest]
    top_k: int | None = None
    n_results: int = DEFAULT_TOP_K
    all_equal: bool = False  # every candidate is the same one


EDGES = {
    "n1": Edge(lambda w: world_request(w, 1, 10), n_results=1),
    "l1": Edge(lambda w: with_history(world_request(w, 64, 11), 1)),
    "n-max": Edge(lambda w: world_request(w, N_MAX, 14)),
    "l-max": Edge(lambda w: with_history(world_request(w, 64, 15), L_MAX)),
    "top-k-1": Edge(lambda w: world_request(w, 64, 16), top_k=1, n_results=1),
    "top-k-n": Edge(lambda w: world_request(w, 64, 17), top_k=64, n_results=64),
    "top-k-above-n": Edge(lambda w: world_request(w, 64, 18), top_k=1000, n_results=64),
    "duplicate-ids": Edge(duplicates, top_k=5, n_results=5, all_equal=True),
    "huge-ids": Edge(huge_ids),
}


@pytest.mark.parametrize("route", FIXED_ROUTES)
@pytest.mark.parametrize("edge", list(EDGES.values()), ids=list(EDGES))
def test_edge_cases(grpc_client, world, ranker, edge, route):
    request = edge.build(world)
    served = infer(grpc_client, request, route=route, top_k=edge.top_k)
    assert served.top_ids.shape == served.top_scores.shape == (edge.n_results,)
    assert served.scores.shape == request.candidate_ids.shape
    assert np.all(np.isfinite(served.scores))
    assert_same(served, expected(ranker, request, route, edge.top_k))
    if edge.all_equal:
        if route == "cascade":  # light's top M are re-scored by heavy, the rest scaled: two groups
            m = min(request.candidate_ids.size, max(CASCADE_M, edge.top_k or DEFAULT_TOP_K))
            groups = [served.scores[:m], served.scores[m:]]
        else:
            groups = [served.scores]
        for g in (g for g in groups if g.size):
            np.testing.assert_allclose(g, g[0], rtol=RTOL, atol=0)


# --- 5. concurrency -------------------------------------------------------------------------------


def test_concurrent_requests(triton_server, world, ranker):
    """200 requests from 16 threads, each thread with its own gRPC client, routes mixed."""
    routes = (*FIXED_ROUTES, "auto")
    sizes = (16, 100, 700)
    requests = [
        (world_request(world, sizes[i % len(sizes)], 1000 + i // 12, row=i % 12), routes[i % len(routes)])
        for i in range(200)
    ]
    local, clients, lock = threading.local(), [], threading.Lock()

    def send(item: tuple[RankingRequest, str]) -> RankingResult:
        if not hasattr(local, "client"):
            local.client = grpcclient.InferenceServerClient(triton_server.grpc_url)
            with lock:
                clients.append(local.client)
        request, route = item
        return infer(local.client, request, route=route)

    with grpcclient.InferenceServerClient(triton_server.grpc_url) as stats_client:
        before = batch_counts(stats_client)
        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                results = list(pool.map(send, requests))
        finally:
            for client in clients:
                client.close()
        after = batch_counts(stats_client)
    assert len(results) == 200
    for (request, route), served in zip(requests, results, strict=True):
        assert served.route == route or (route == "auto" and served.route in FIXED_ROUTES)
        assert_same(served, expected(ranker, request, served.route))
    # 16 requests in flight: the batched models ran several requests per execution.
    for model in BATCHED_MODELS:
        requests_done = after[model][0] - before[model][0]
        executions = after[model][1] - before[model][1]
        assert requests_done == 200, model
        assert executions < requests_done, f"{model}: {executions} executions for {requests_done} requests"


BATCHED_MODELS = ("embedding_lookup", "user_tower", "ranker")


def batch_counts(client: grpcclient.InferenceServerClient) -> dict[str, tuple[int, int]]:
    """{model: (requests, executions)} from Triton's statistics: fewer executions = batches formed."""
    out = {}
    for model in BATCHED_MODELS:
        stats = client.get_inference_statistics(model).model_stats[0]
        out[model] = (stats.inference_count, stats.execution_count)
    return out


# --- 6. bad inputs --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    names: str  # regex the error message must match: the offending input or parameter
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # replaces the valid request's inputs
    params: dict[str, object] = field(default_factory=dict)


def _valid_arrays(n: int = 8, history_len: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "user_features": np.array([3, 1, 2, 0], dtype=np.int64),
        "history_ids": rng.integers(0, 800, size=history_len, dtype=np.int64),
        "candidate_ids": rng.integers(0, 800, size=n, dtype=np.int64),
        "candidate_features": rng.integers(0, 8, size=(n, 3), dtype=np.int64),
    }


def _negative(name: str) -> dict[str, np.ndarray]:
    a = _valid_arrays()[name].copy()
    a.flat[-1] = -1
    return {name: a}


def _n(n: int) -> dict[str, np.ndarray]:
    return {k: v for k, v in _valid_arrays(n=n).items() if k.startswith("candidate")}


BAD = {
    "n-mismatch": Bad("candidate_features.*candidate_ids", {"candidate_features": np.zeros((9, 3), np.int64)}),
    "n-zero": Bad("candidate_ids", _n(0)),
    "n-above-max": Bad("candidate_ids", _n(N_MAX + 1)),
    "l-zero": Bad("history_ids", {"history_ids": np.zeros(0, np.int64)}),
    "l-above-max": Bad("history_ids", {"history_ids": np.zeros(L_MAX + 1, np.int64)}),
    "negative-user-features": Bad("user_features", _negative("user_features")),
    "negative-history-ids": Bad("history_ids", _negative("history_ids")),
    "negative-candidate-ids": Bad("candidate_ids", _negative("candidate_ids")),
    "negative-candidate-features": Bad("candidate_features", _negative("candidate_features")),
    "unknown-route": Bad("route", params={"route": "fastest"}),
    "budget-not-numeric": Bad("latency_budget_ms", params={"latency_budget_ms": "fast"}),
    "budget-negative": Bad("latency_budget_ms", params={"latency_budget_ms": -5.0}),
    "sent-at-text": Bad("sent_at_unix_ms", params={"latency_budget_ms": 50.0, "sent_at_unix_ms": "now"}),
    "sent-at-future": Bad("sent_at_unix_ms", params={"latency_budget_ms": 50.0, "sent_at_unix_ms": 9e15}),
    "top-k-zero": Bad("top_k", {"top_k": np.array([0], np.int32)}),
    "top-k-negative": Bad("top_k", {"top_k": np.array([-3], np.int32)}),
    "wrong-dtype": Bad("candidate_ids", {"candidate_ids": np.arange(8, dtype=np.int32)}),  # Triton rejects it
    "user-features-length": Bad("user_features", {"user_features": np.arange(5, dtype=np.int64)}),
}


def send_raw(client: grpcclient.InferenceServerClient, bad: Bad) -> None:
    """One request with ``bad``'s arrays (one user's, given the batch dim of 1) and parameters sent
    as they are (no client-side typing)."""
    inputs = raw_inputs(as_request({**_valid_arrays(), **bad.arrays}))
    outputs = [grpcclient.InferRequestedOutput(name) for name in ADAPTIVE_RANKING.output_names]
    client.infer(MODEL_NAME, inputs, outputs=outputs, parameters={"route": "cascade", **bad.params})


def assert_invalid(client: grpcclient.InferenceServerClient, bad: Bad) -> None:
    with pytest.raises(InferenceServerException, match=bad.names) as info:
        send_raw(client, bad)
    assert "INVALID_ARG" in str(info.value.status())


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_bad_input_is_invalid_argument(grpc_client, bad):
    assert_invalid(grpc_client, bad)


def test_valid_raw_request_is_accepted(grpc_client):
    """The base that every BAD case modifies is itself valid."""
    send_raw(grpc_client, Bad(""))


def test_server_serves_after_bad_inputs(grpc_client, world, ranker):
    """Self-contained (independent of test order): every bad input, then a normal request."""
    for bad in BAD.values():
        assert_invalid(grpc_client, bad)
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready(MODEL_NAME)
    request = world_request(world, 300, 20)
    for route in FIXED_ROUTES:
        assert_same(infer(grpc_client, request, route=route), expected(ranker, request, route))


# --- 7. HTTP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("route", FIXED_ROUTES)
def test_http_equals_grpc(grpc_client, http_client, world, ranker, route):
    """Same server, same request, same micro-batch shapes, single-threaded ONNX Runtime: bitwise equal."""
    request = world_request(world, 700, 21)
    via_grpc = infer(grpc_client, request, route=route, top_k=7)
    via_http = infer(http_client, request, route=route, top_k=7)
    assert via_http.route == via_grpc.route == route
    np.testing.assert_array_equal(via_http.scores, via_grpc.scores)
    np.testing.assert_array_equal(via_http.top_ids, via_grpc.top_ids)
    np.testing.assert_array_equal(via_http.top_scores, via_grpc.top_scores)
    assert_same(via_http, expected(ranker, request, route, 7))


# --- 8. metrics -----------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def read_metrics(url: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(name, frozenset of (label, value)): value}."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = frozenset(_LABEL.findall(match["labels"] or ""))
            samples[(match["name"], labels)] = float(match["value"])
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def settled_metrics(url: str, timeout_s: float = 10.0) -> dict[tuple[str, frozenset], float]:
    """The ranker sends its metrics in batches (metrics_interval_ms, 250 ms): read until two
    reads one interval apart agree, so the updates of requests already answered are in."""
    last = read_metrics(url)
    deadline = time.monotonic() + timeout_s
    while True:
        time.sleep(0.5)
        now = read_metrics(url)
        ranker_now = {k: v for k, v in now.items() if k[0].startswith("ranker_")}
        if ranker_now == {k: v for k, v in last.items() if k[0].startswith("ranker_")} or time.monotonic() > deadline:
            return now
        last = now


def test_metrics_count_requests_and_candidates(grpc_client, triton_server, world):
    sent = {"light": (3, 100), "heavy": (2, 150), "cascade": (2, 600)}  # route: (requests, N)
    top_k = 10
    before = settled_metrics(triton_server.metrics_url)
    for route, (count, n) in sent.items():
        for seed in range(count):
            infer(grpc_client, world_request(world, n, 30 + seed), route=route, top_k=top_k)
    after = settled_metrics(triton_server.metrics_url)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    for route, (count, _) in sent.items():
        assert metric(after, "ranker_requests_total", route=route) >= count
        assert delta("ranker_requests_total", route=route) == count  # tests run one at a time
    light_n = sum(c * n for r, (c, n) in sent.items() if r in ("light", "cascade"))
    heavy_n = sent["heavy"][0] * sent["heavy"][1] + sent["cascade"][0] * max(CASCADE_M, top_k)
    assert delta("ranker_candidates_scored_total", tier="light") == light_n
    assert delta("ranker_candidates_scored_total", tier="heavy") == heavy_n
    assert metric(after, "ranker_candidates_scored_total", tier="light") >= light_n
    assert metric(after, "ranker_candidates_scored_total", tier="heavy") >= heavy_n
