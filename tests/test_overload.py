"""Overload and load: bounded queues, fast rejection, and a short soak.

1. Every model has a bounded queue (``dynamic_batching.default_queue_policy``:
   max_queue_size, a queue timeout, REJECT) in both profiles, the ranker included (two
   instances: Triton gives each one request at a time).
2. On a copy of the repository with the ranker's queue cut to 2 and the heavy scorer
   slowed to 1 s per call, a burst of 48 heavy requests: most are refused, with UNAVAILABLE
   "Exceeds maximum queue size" (at once) or a queue timeout, within bounded time; every
   other one is answered correctly, and the server serves after.
3. A short soak (perf/soak.py) against the session server: every route, concurrency 32,
   no errors, every answer equal to the in-process composition; memory growth recorded.
"""

from __future__ import annotations

import asyncio
import re
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
RANKER_QUEUE_TIMEOUT_S = 2.0  # the ranker's default_timeout_microseconds
ENGINE_QUEUE_TIMEOUT_S = 5.0  # the engines'


def _config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS))
@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_engine_queues_are_bounded(name: str, profile: str):
    cfg = _config(REPOSITORY / name / profile)
    assert cfg.HasField("dynamic_batching"), f"{name}/{profile}: no queue policy"
    policy = cfg.dynamic_batching.default_queue_policy
    assert 0 < policy.max_queue_size <= 256
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert 0 < policy.default_timeout_microseconds <= 60_000_000


@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/cpu.pbtxt"])
def test_ranker_queue_is_bounded(profile: str):
    cfg = _config(REPOSITORY / "ranker" / profile)
    policy = cfg.dynamic_batching.default_queue_policy
    assert cfg.HasField("dynamic_batching"), f"ranker/{profile}: no queue policy"
    assert 0 < policy.max_queue_size <= 256
    assert policy.timeout_action == mc.ModelQueuePolicy.REJECT
    assert 0 < policy.default_timeout_microseconds <= RANKER_QUEUE_TIMEOUT_S * 1e6
    assert sum(group.count for group in cfg.instance_group) >= 2  # one request per instance at a time
    assert float(cfg.parameters["heavy_timeout_ms"].string_value) > 0


def _tighten(repo: Path) -> None:
    ranker = repo / "ranker" / "configs" / "cpu.pbtxt"  # the profile run_server serves
    text, count = re.subn(r"max_queue_size: \d+", "max_queue_size: 2", ranker.read_text())
    assert count == 1, f"no max_queue_size in {ranker}"
    ranker.write_text(text)


def test_overload_is_refused_at_once_and_answers_stay_correct(tmp_path: Path):
    repo = repository_copy(REPOSITORY, tmp_path / "repo")
    _tighten(repo)
    # A heavy scorer that takes 1 s per call (tests/test_faults.py's test-only wrapper): the two
    # ranker instances stay busy while the whole burst arrives (1-3 s on 2 cores), whatever the speed.
    (repo / "scorer_heavy" / "1" / "model.py").write_text(FAULTY_HEAVY)
    (repo / "scorer_heavy" / "fault_mode").write_text("slow:1.0")
    ranker = InProcessRanker(REPOSITORY)
    pool = [r for r in make_pool(6, seed=77) if r.candidate_ids.size == 700]
    with run_server(ServerConfig(model_repository=repo, log_path=tmp_path / "server.log")) as server:
        outcomes = asyncio.run(send_all(server.grpc_url, pool, 48, 48, 50.0, 30.0, routes=("heavy",)))
        refused = [(r, s) for _, _, r, s in outcomes if isinstance(r, Exception)]
        answered = [(i, r) for i, _, r, _ in outcomes if not isinstance(r, Exception)]
        assert answered, "overload must not refuse everything"
        assert len(refused) + len(answered) == len(outcomes) == 48
        full = 0
        for error, seconds in refused:
            assert "UNAVAILABLE" in str(error.status()), error
            # queue full at arrival, or (a request queued behind slow ones) a queue timeout
            assert re.search(r"Exceeds maximum queue size|Request timeout expired", error.message()), error.message()
            assert seconds < ENGINE_QUEUE_TIMEOUT_S + 2.0, f"a refusal took {seconds:.2f} s: no queue is unbounded"
            full += "Exceeds maximum queue size" in error.message()
        # Most of the burst is refused: at once when it finds the ranker's queue full (after the
        # embedding and tower steps), or by a queue timeout once queued; the message says which.
        assert len(refused) >= 24, f"only {len(refused)} of 48 refused with a ranker queue of 2"
        assert full >= 1, "no request found the ranker's queue full"
        for index, result in answered:
            want = ranker.rank(pool[index].arrays(), "heavy", 10)
            np.testing.assert_array_equal(result.top_ids, want.top_ids)
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            served = infer(client, pool[0], route="cascade", top_k=10)
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
