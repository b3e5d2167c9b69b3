"""Faults: a failing or slow heavy scorer, and a Python stub that dies.

1. ``serving.ranker.rank`` with a scripted ``ScoreFn`` (no server): inside cascade and auto
   a heavy failure or a heavy stage past the budget falls back to the light ranking
   with route "light"; an explicit heavy route raises ``ScorerError``.
2. The real server on a copy of the model repository (tmp_path) whose
   ``scorer_heavy/1/model.py`` wraps the shared runner with an injected fault, read
   per request from a file next to it ("ok", "fail" or "slow:<seconds>"): the shared
   models are not touched. Checked: the fallback answers equal the light route's, the
   route reported, ``ranker_fallbacks_total`` and the error of route=heavy.
3. A Python stub killed with SIGKILL (found by its command line among the server's
   process group): Triton 2.51 does not restart it; requests that reach it fail at once
   naming the stub, the other models keep serving, and a server restart recovers.
4. The same under serving/server/supervisor.py on a copy of the repository: a stub killed with
   SIGKILL, a request that kills a stub and a request that aborts the server are each
   followed by a restart on the same ports and, within RECOVERY_S, the ranking from
   before the fault (the downtime, fault to first correct answer, is printed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from client.ranking_client import RankingRequest, infer
from perf.analyzer import Job, bls_composing
from perf.repository import repository_copy
from serving.batcher import CallPlan
from serving.composition import SharedState
from serving.contract import RankingResult
from serving.inprocess import InProcessRanker
from serving.ranker import RankerState, RequestTime, ScorerError, rank
from serving.routing import CostModel, RoutePolicy, TierCost
from serving.server.launcher import (
    REPO_ROOT,
    RunningServer,
    ServerConfig,
    check_artifacts,
    run_server,
    stub_processes,
)
from serving.server.supervisor import Supervisor, SupervisorConfig, Verdict, judge, supervised_server
from tests.test_serving import metric, settled_metrics

# --- 1. ranker.rank without a server ------------------------------------------------------------

N, K, D, C, E = 40, 5, 4, 4, 3
PRIORS = {"light": TierCost(1.0, 0.001), "heavy": TierCost(2.0, 0.01)}


def _state(**kw: object) -> RankerState:
    calls = CallPlan(micro_batch=16, split_min=16)
    return RankerState(RoutePolicy(cascade_m=8, confidence_threshold=1.0), CostModel(PRIORS), calls, **kw)


def _shared() -> SharedState:
    return SharedState(np.ones((1, D), np.float32), np.ones((1, 6, D), np.float32))


def _emb() -> np.ndarray:
    return np.random.default_rng(0).random((N, C, E), dtype=np.float32)


def scripted(heavy: str, delay_s: float = 0.0):
    """A ScoreFn: light = mean of the embedding, heavy = 1 - that, or a failure / a delay."""

    async def score_fn(tier: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        cand = inputs["candidate_emb"]  # light (n, C, E); heavy blocks (B, n, C, E)
        emb = cand.reshape(*cand.shape[: 1 if tier == "light" else 2], -1).mean(axis=-1)
        if tier == "light":
            return emb
        if heavy == "fail":
            raise ScorerError("scorer_heavy: injected fault")
        await asyncio.sleep(delay_s)
        return 1.0 - emb

    return score_fn


def _light_only() -> np.ndarray:
    return asyncio.run(rank(scripted("ok"), _state(), _shared(), _emb(), "light", K, RequestTime.now(100.0))).scores


@pytest.mark.parametrize(
    "route, budget_ms, heavy, delay_s, reason",
    [
        ("cascade", 1e4, "fail", 0.0, "error"),
        ("cascade", 50.0, "slow", 1.0, "timeout"),
        ("auto", 1e4, "fail", 0.0, "error"),  # auto plans heavy on a roomy budget
    ],
    ids=["cascade-fails", "cascade-late", "auto-heavy-fails"],
)
def test_rank_falls_back_to_light(route, budget_ms, heavy, delay_s, reason):
    start = time.perf_counter()
    timing = RequestTime.now(budget_ms)
    result = asyncio.run(rank(scripted(heavy, delay_s), _state(), _shared(), _emb(), route, K, timing))
    assert time.perf_counter() - start < 0.9  # a late heavy stage is abandoned at the budget, not awaited
    assert result.route == "light" and result.fallback == reason
    assert "scorer_heavy" in result.fallback_detail
    np.testing.assert_array_equal(result.scores, _light_only())
    assert "heavy" not in result.candidates_scored


def test_rank_heavy_on_time_is_not_a_fallback():
    timing = RequestTime.now(5000.0)
    result = asyncio.run(rank(scripted("slow", 0.01), _state(), _shared(), _emb(), "cascade", K, timing))
    assert result.route == "cascade" and result.fallback is None
    assert result.candidates_scored == {"light": N, "heavy": 8}


def test_rank_explicit_heavy_raises():
    with pytest.raises(ScorerError, match="scorer_heavy"):
        asyncio.run(rank(scripted("fail"), _state(), _shared(), _emb(), "heavy", K, RequestTime.now(1e4)))


# --- 2. the real server with an injected heavy fault ----------------------------------------------

FAULTY_HEAVY = '''
"""scorer_heavy with an injected fault for tests/test_faults.py, read per request from ./fault_mode."""
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from serving.triton.onnx_model import OnnxModel


class TritonPythonModel(OnnxModel):
    def initialize(self, args):
        super().initialize(args)
        self.mode_file = Path(args["model_repository"]) / "fault_mode"

    def execute(self, requests):
        mode = self.mode_file.read_text().strip() if self.mode_file.exists() else "ok"
        if mode == "fail":
            error = pb_utils.TritonError("injected fault", pb_utils.TritonError.INTERNAL)
            return [pb_utils.InferenceResponse(error=error) for _ in requests]
        if mode.startswith("slow:"):
            time.sleep(float(mode[5:]))
        return super().execute(requests)
'''


def copy_repository(dst: Path) -> Path:
    src = REPO_ROOT / "model_repository"
    check_artifacts(src)
    # The faults are injected into the scorer_heavy model: the ranker must call it (BLS, as the
    # GPU profile does), not run its graph in process as the CPU profile does.
    return repository_copy(src, dst, {"scorer_calls": "bls"})


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, Path]]:
    root = tmp_path_factory.mktemp("faults")
    repo = copy_repository(root / "repo")
    (repo / "scorer_heavy" / "1" / "model.py").write_text(FAULTY_HEAVY)
    cfg = ServerConfig(model_repository=repo, log_path=root / "server.log")
    with run_server(cfg) as server:
        yield server, repo / "scorer_heavy" / "fault_mode"


@pytest.fixture(scope="module")
def client(fault_server) -> Iterator[grpcclient.InferenceServerClient]:
    c = grpcclient.InferenceServerClient(fault_server[0].grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def ranker() -> InProcessRanker:
    return InProcessRanker(REPO_ROOT / "model_repository")


def a_request(seed: int, n: int = 300) -> RankingRequest:
    rng = np.random.default_rng(seed)
    return RankingRequest(
        np.array([seed, 1, 2, 0], dtype=np.int64),
        rng.integers(0, 500, 12).astype(np.int64),
        rng.integers(0, 500, n).astype(np.int64),
        rng.integers(0, 6, (n, 3)).astype(np.int64),
    )


def set_fault(fault_server, mode: str) -> None:
    fault_server[1].write_text(mode)


@pytest.mark.parametrize(
    "mode, route, budget_ms, reason",
    [
        ("fail", "cascade", None, "error"),
        ("fail", "auto", 1e5, "error"),
        ("slow:2.0", "cascade", 300.0, "timeout"),
        ("slow:2.0", "auto", 300.0, None),  # auto may plan light outright; whatever it does, it is on time
    ],
    ids=["cascade-fails", "auto-fails", "cascade-late", "auto-late"],
)
def test_server_falls_back_to_light(fault_server, client, ranker, mode, route, budget_ms, reason):
    request = a_request(1)
    before = settled_metrics(fault_server[0].metrics_url)
    set_fault(fault_server, mode)
    try:
        start = time.perf_counter()
        served = infer(client, request, route=route, latency_budget_ms=budget_ms, client_timeout=30)
        elapsed_s = time.perf_counter() - start
    finally:
        set_fault(fault_server, "ok")
    after = settled_metrics(fault_server[0].metrics_url)
    if reason is None and served.route != "light":  # auto chose cascade/heavy and the heavy stage was late
        pytest.fail(f"auto answered {served.route} although heavy sleeps 2 s past a 300 ms budget")
    assert served.route == "light"
    want = ranker.rank(request.arrays(), "light", 10)
    np.testing.assert_allclose(served.scores, want.scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(served.top_ids, want.top_ids)
    if budget_ms is not None and budget_ms < 1000:
        assert elapsed_s < 1.5, f"fallback took {elapsed_s:.2f} s on a {budget_ms} ms budget"
    if reason is not None:
        fallbacks = metric(after, "ranker_fallbacks_total", reason=reason)
        assert fallbacks - metric(before, "ranker_fallbacks_total", reason=reason) == 1


def test_bls_composing_lists_the_scorers_called(fault_server):
    url = fault_server[0].grpc_url
    job = Job("x", "adaptive_ranking", Path("in.json"), route="cascade")
    assert bls_composing(job, url) == ("scorer_light", "scorer_heavy")
    assert bls_composing(replace(job, route="auto"), url) == ()  # auto may call neither in a window


def test_server_heavy_route_error_names_scorer_heavy(fault_server, client):
    set_fault(fault_server, "fail")
    try:
        with pytest.raises(InferenceServerException, match="scorer_heavy") as info:
            infer(client, a_request(2), route="heavy")
    finally:
        set_fault(fault_server, "ok")
    assert "INTERNAL" in str(info.value.status())


def test_server_cascade_again_once_heavy_recovers(fault_server, client, ranker):
    set_fault(fault_server, "ok")
    time.sleep(2.5)  # the abandoned slow heavy calls of the tests above finish
    request = a_request(3)
    served = infer(client, request, route="cascade", client_timeout=30)
    assert served.route == "cascade"
    np.testing.assert_array_equal(served.top_ids, ranker.rank(request.arrays(), "cascade", 10).top_ids)


# --- 3. a stub that dies --------------------------------------------------------------------------


def stub_pids(server: RunningServer, model: str) -> list[int]:
    """Python backend stubs of ``model`` in the server's process group (the group id is its pid)."""
    return sorted(stub.pid for stub in stub_processes(server.process.pid) if stub.model == model)


def test_killed_stub_fails_fast_and_a_restart_recovers(fault_server, client, ranker):
    """What Triton 2.51 really does when a stub dies (kept last: it breaks the fault server).

    The Python backend of 2.51 does not restart a dead stub: every later request to that
    model gets an error naming the stub ("Stub process '<model>_0_0' is not healthy"),
    at once, while the server stays live and the other models keep serving. Recovery is a
    restart of the server (model control is "none"), checked here on the same repository.
    """
    server, repo = fault_server[0], fault_server[1].parents[1]
    request = a_request(4)
    want = ranker.rank(request.arrays(), "cascade", 10)
    pids = stub_pids(server, "embedding_lookup")
    assert len(pids) == 1, f"expected one stub of embedding_lookup, found {pids}"
    os.kill(pids[0], signal.SIGKILL)
    start = time.monotonic()
    with pytest.raises(InferenceServerException, match="embedding_lookup.*not healthy"):
        for _ in range(20):  # the first request after the kill may still see the stub as alive
            infer(client, request, route="cascade", client_timeout=30)
            time.sleep(0.2)
    assert time.monotonic() - start < 10, "a dead stub must fail requests fast, not hang them"
    assert server.process.poll() is None and client.is_server_live()
    light_direct = ranker.chain(request.arrays())  # scorer_light alone still serves
    inputs = {
        "user_state": light_direct.tower["user_state"],
        "candidate_emb": light_direct.candidate_emb,
        "candidate_user": np.zeros(request.candidate_ids.size, dtype=np.int64),
    }
    tensors = []
    for name, array in inputs.items():
        t = grpcclient.InferInput(name, list(array.shape), "FP32" if array.dtype == np.float32 else "INT64")
        t.set_data_from_numpy(array)
        tensors.append(t)
    scores = client.infer("scorer_light", tensors).as_numpy("scores")
    np.testing.assert_allclose(scores, ranker.score("light", light_direct, light_direct.candidate_emb), rtol=1e-5)
    client.close()
    server.process.kill()  # a server with a dead stub ignores SIGINT for its whole stop timeout
    with run_server(ServerConfig(model_repository=repo, log_path=repo.parent / "restarted.log")) as restarted:
        with grpcclient.InferenceServerClient(restarted.grpc_url) as again:
            served = infer(again, request, route="cascade", client_timeout=30)
    assert served.route == "cascade"
    np.testing.assert_array_equal(served.top_ids, want.top_ids)
    np.testing.assert_allclose(served.scores, want.scores, rtol=1e-5, atol=1e-6)


# --- 4. the supervisor restarts the server ---------------------------------------------------------

SUPERVISOR = SupervisorConfig(probe_interval_s=1.0)
RECOVERY_S = 120.0  # a restart loads every model again: about 10 s on the 2-core CI machine
HUGE = 2**61  # 8 bytes x 2**61 = 2**64: Triton 2.51's byte size of such an INT64 tensor wraps to 0


def _error(status: str, message: str) -> InferenceServerException:
    return InferenceServerException(message, status=f"StatusCode.{status}")


@pytest.mark.parametrize(
    "failures, live, verdict",
    [
        ({}, True, Verdict()),
        ({"ranker": _error("INVALID_ARGUMENT", "ranker: input 'x'")}, True, Verdict()),
        (
            {"scorer_light": _error("INTERNAL", "Stub process 'scorer_light_0_1' is not healthy.")},
            False,
            Verdict(dead_stub="scorer_light: Stub process 'scorer_light_0_1' is not healthy."),
        ),
        (
            {"user_tower": _error("DEADLINE_EXCEEDED", "Deadline Exceeded")},
            True,
            Verdict(None, "user_tower: Deadline Exceeded"),
        ),
        ({"ranker": _error("UNAVAILABLE", "Exceeds maximum queue size")}, True, Verdict()),
        ({"ranker": _error("UNAVAILABLE", "failed to connect")}, False, Verdict(None, "ranker: failed to connect")),
    ],
    ids=["all-answered", "other-error", "dead-stub", "timed-out", "busy", "no-server"],
)
def test_supervisor_judges_a_probe_round(failures, live, verdict):
    """Only a dead stub restarts at once; timeouts and a server that is not even live count as a
    round without answers; a full queue on a live server and other errors restart nothing."""
    asked = []

    def server_live() -> bool:
        asked.append(True)
        return live

    assert judge(failures, server_live) == verdict
    assert bool(asked) == any(str(e.status()) == "StatusCode.UNAVAILABLE" for e in failures.values())


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervisor]:
    root = tmp_path_factory.mktemp("supervised")
    repo = copy_repository(root / "repo")
    with supervised_server(ServerConfig(model_repository=repo, log_path=root / "server.log"), SUPERVISOR) as sup:
        yield sup


def declared(name: str, array: np.ndarray) -> list[int]:
    """The shape a crashing request declares: candidate_ids as [1, HUGE] (one user, the contract's
    rank, so Triton's shape check passes), the others as they are."""
    return [1, HUGE] if name == "candidate_ids" else list(array.shape)


def kill_stub(sup: Supervisor) -> str:
    """SIGKILL the embedding_lookup stub (every request goes through it)."""
    (stub,) = [s for s in stub_processes(sup.server.process.pid) if s.model == "embedding_lookup"]
    os.kill(stub.pid, signal.SIGKILL)
    return f"Python stub died: {stub.instance}"


def request_that_kills_a_stub(sup: Supervisor) -> str:
    """gRPC, raw contents: candidate_ids declared [1, 2**61] with no bytes. 2.51 checks the byte size
    (wrapped to 0) and passes the request on; the stub dies building the NumPy array, before
    any model code runs (so no check in the model repository can catch it)."""
    request = service_pb2.ModelInferRequest(model_name="adaptive_ranking")
    for name, array in a_request(5).arrays().items():
        request.inputs.add(name=name, datatype="INT64", shape=declared(name, array))
        request.raw_input_contents.append(b"" if name == "candidate_ids" else array.tobytes())
    with grpc.insecure_channel(sup.server.grpc_url) as channel:
        with pytest.raises(grpc.RpcError) as info:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    # Triton notices the dead stub within about 1 s and answers naming it, unless the supervisor
    # restarted the server first (probes every SUPERVISOR.probe_interval_s): then the call drops.
    details = info.value.details()
    assert "'embedding_lookup_0_0' is not healthy" in details or info.value.code() == grpc.StatusCode.UNAVAILABLE
    return "embedding_lookup_0_0"  # in the supervisor's reason: the stub died


def request_that_aborts_the_server(sup: Supervisor) -> str:
    """HTTP, JSON data: candidate_ids declared [1, 2**61]. 2.51 sizes a buffer for the declared shape
    before it reads the data: std::length_error, the server aborts and the connection drops."""
    inputs = [
        {"name": k, "shape": declared(k, v), "datatype": "INT64", "data": v.ravel().tolist()}
        for k, v in a_request(5).arrays().items()
    ]
    body = json.dumps({"inputs": inputs}).encode()
    head = f"POST /v2/models/adaptive_ranking/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    host, port = sup.server.http_url.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + body)
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:
            answer = b""
    assert answer == b"", f"2.51 aborts on this request, but it answered: {answer[:200]!r}"
    return "tritonserver exited with code -"  # a signal: SIGABRT, or SIGSEGV inside Triton's abort handler


def poll_ranking(url: str, request: RankingRequest, want: RankingResult, deadline_s: float) -> None:
    """Wait until ``url`` answers ``request`` (cascade) with ``want``; fail past ``deadline_s``."""
    start = time.monotonic()
    last = "no answer yet"
    while time.monotonic() - start < deadline_s:
        try:
            with grpcclient.InferenceServerClient(url) as client:
                served = infer(client, request, route="cascade", client_timeout=10)
        except InferenceServerException as e:
            last = e.message()
            time.sleep(0.2)
            continue
        assert served.route == "cascade"
        np.testing.assert_array_equal(served.top_ids, want.top_ids)
        np.testing.assert_allclose(served.scores, want.scores, rtol=1e-5, atol=1e-6)
        return
    pytest.fail(f"no correct answer within {deadline_s:.0f} s of the fault; last error: {last}")


@pytest.mark.parametrize(
    "fault",
    [kill_stub, request_that_kills_a_stub, request_that_aborts_the_server],
    ids=["sigkill-stub", "request-kills-stub", "request-aborts-server"],
)
def test_supervisor_restarts_the_server(supervised, ranker, fault):
    request = a_request(6)
    url = supervised.server.grpc_url  # the same across restarts
    with grpcclient.InferenceServerClient(url) as client:
        before = infer(client, request, route="cascade", client_timeout=30)
    np.testing.assert_array_equal(before.top_ids, ranker.rank(request.arrays(), "cascade", 10).top_ids)
    restarts, pid = len(supervised.restarts), supervised.server.process.pid
    start = time.monotonic()
    expected_reason = fault(supervised)
    poll_ranking(url, request, before, RECOVERY_S)
    downtime_s = time.monotonic() - start
    for _ in range(50):  # the new server answers a moment before the supervisor records the restart
        if len(supervised.restarts) > restarts:
            break
        time.sleep(0.1)
    assert len(supervised.restarts) == restarts + 1, supervised.restarts
    restart = supervised.restarts[-1]
    print(
        f"\n{fault.__name__}: correct answers again {downtime_s:.1f} s after the fault "
        f"(restart took {restart.downtime_s:.1f} s of it; reason: {restart.reason})"
    )
    assert expected_reason in restart.reason
    assert supervised.server.process.pid != pid and supervised.server.grpc_url == url
