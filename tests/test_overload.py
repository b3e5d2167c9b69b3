"""Overload: Triton's queues without a queue policy, a burst that degrades instead of failing, a soak.

1. No model has a ``dynamic_batching.default_queue_policy`` (in both profiles): a queue size
   or timeout turns off the dynamic batcher's payload prefetching, and requests that arrive
   while every instance is busy then wait up to 500 ms (``perf/bursts.py`` measures it;
   docs/performance.md). The scorers (max_batch_size 0) have no batcher at all.
2. On a copy of the repository with the heavy scorer slowed to 1 s per call, a burst of 48
   requests at once, heavy and auto (300 ms budget) alternating: every one is answered, none
   refused; each heavy answer is the heavy ranking, each auto answer the ranking of the route it
   reports (the light ranking when heavy was abandoned), all within bounded time; the server
   serves after.
3. A short soak (perf/soak.py) against the session server: every route, concurrency 32,
   no errors, every answer equal to the in-process composition; memory growth recorded.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from client.ranking_client import infer
from perf.repository import ranker_config, repository_copy
from perf.soak import make_pool, run_soak, send_all
from serving.contract import ENGINE_MODELS
from serving.inprocess import InProcessRanker
from serving.server.launcher import REPO_ROOT, ServerConfig, run_server
from tests.test_faults import FAULTY_HEAVY

REPOSITORY = REPO_ROOT / "model_repository"
MODELS = sorted(set(ENGINE_MODELS) | {"ranker"})
BURST = 48
SLOW_HEAVY_S = 1.0


def _config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_no_queue_policy_turns_prefetching_off(name: str, profile: str):
    cfg = _config(REPOSITORY / name / profile)
    batcher = cfg.dynamic_batching
    assert not batcher.HasField("default_queue_policy"), f"{name}/{profile}: a queue policy stalls the batcher"
    assert batcher.priority_levels == 0 and not batcher.priority_queue_policy, f"{name}/{profile}: priorities"
    # A batcher on a model that takes no batch only queues: it would add a thread and nothing else.
    assert cfg.HasField("dynamic_batching") == (cfg.max_batch_size > 0), f"{name}/{profile}"


def test_overload_burst_is_answered_correctly(tmp_path: Path):
    repo = repository_copy(REPOSITORY, tmp_path / "repo", {"scorer_calls": "bls"})  # the slow model is called
    # A heavy scorer that takes 1 s per call (tests/test_faults.py's test-only wrapper): both ranker
    # instances are busy on heavy calls while the whole burst arrives, whatever the machine's speed.
    (repo / "scorer_heavy" / "1" / "model.py").write_text(FAULTY_HEAVY)
    (repo / "scorer_heavy" / "fault_mode").write_text(f"slow:{SLOW_HEAVY_S}")
    ranker = InProcessRanker(REPOSITORY)
    pool = make_pool(6, seed=77)
    with run_server(ServerConfig(model_repository=repo, log_path=tmp_path / "server.log")) as server:
        outcomes = asyncio.run(send_all(server.grpc_url, pool, BURST, BURST, 300.0, 120.0, routes=("heavy", "auto")))
        errors = [(route, r) for _, route, r, _ in outcomes if isinstance(r, Exception)]
        assert not errors, errors[:3]
        # Every heavy call takes 1 s on one of two instances; the burst needs at most one heavy
        # call per heavy request, so nothing waits longer than that queue plus slack.
        bound_s = SLOW_HEAVY_S * BURST / 2 + 10.0
        for index, route, result, seconds in outcomes:
            assert seconds < bound_s, f"request {index} ({route}) took {seconds:.1f} s"
            if route == "heavy":
                assert result.route == "heavy", result.route  # a fixed route never falls back
            want = ranker.rank(pool[index].arrays(), result.route, 10)
            np.testing.assert_array_equal(result.top_ids, want.top_ids, err_msg=f"{route} -> {result.route}")
        auto = [r for _, route, r, _ in outcomes if route == "auto"]
        assert any(r.route == "light" for r in auto), "under this load auto should end on light somewhere"
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            served = infer(client, pool[0], route="cascade", top_k=10, latency_budget_ms=5000.0)
        np.testing.assert_array_equal(served.top_ids, ranker.rank(pool[0].arrays(), "cascade", 10).top_ids)


def test_short_soak(triton_server, record_property):
    ranker = InProcessRanker(REPOSITORY, policy=ranker_config(REPOSITORY).policy)
    report = run_soak(
        triton_server.grpc_url,
        triton_server.process.pid,
        ranker,
        requests=600,
        concurrency=32,
        budget_ms=50.0,
        load_aware=True,
        metrics_url=triton_server.metrics_url,
    )
    record_property("soak", report.as_dict())
    assert report.errors == 0, report.error_samples
    assert report.wrong_answers == 0
    assert set(report.routes_taken) <= {"light", "heavy", "cascade"}
    growth = report.rss_growth_mb
    assert growth and max(growth.values()) < 100, growth  # leaks show as steady growth: see make soak
