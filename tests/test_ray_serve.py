"""Ray Serve: the queue-time policy, the app's arguments and forwarded routes, and the scale
test on a local Ray cluster (deploy/ray_serve/scale_test.py, preset "ci"; ``make deploy-check``
runs "full"): 1 -> 3 -> 1 real tritonserver replicas under load, every answer equal to a single
server's, none lost, a SIGKILLed replica's server stopped by the watchdog, none left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from deploy.queue_signal import Counters, queue_models
from deploy.ray_serve.app import _ROUTES, ReplicaConfig, autoscaling_reading
from deploy.ray_serve.policy import QUEUE_METRIC, QueueTimePolicy, desired_replicas
from deploy.ray_serve.verdict import failures
from serving.contract import ADAPTIVE_RANKING
from serving.server.launcher import REPO_ROOT


@pytest.mark.parametrize(
    "current, mean_us, want",
    [(1, 0.0, 1), (1, 45_000.0, 3), (3, 15_500.0, 3), (3, 20_000.0, 4), (3, 2_000.0, 1), (2, 13_000.0, 2)],
    ids=["idle", "three-times-target", "within-tolerance", "above", "well-below", "just-below-band"],
)
def test_desired_replicas(current, mean_us, want):
    assert desired_replicas(current, mean_us, target_queue_us=15_000.0, tolerance=0.15) == want


@pytest.mark.parametrize(
    "current, starting, mean_us, want",
    [
        (1, 2, 52_500.0, 4),  # 3.5 replicas' worth on the running one: up past the target
        (1, 2, 30_000.0, 3),  # 2 replicas' worth: the starting two are kept
        (1, 2, 15_000.0, 3),  # the running one at the target while two start
        (1, 2, 3_000.0, 3),
        (1, 2, 0.0, 2),  # the running one idle: one starting replica is not needed
        (2, 1, 3_000.0, 2),  # 0.4 of a replica's worth on two, one starting counted at the target
    ],
    ids=["above-target", "twice-target", "at-target", "below-target", "idle", "two-nearly-idle"],
)
def test_starting_replicas_are_not_undone_by_the_running_ones(current, starting, mean_us, want):
    assert desired_replicas(current, mean_us, 15_000.0, tolerance=0.1, starting=starting) == want


def test_policy_counts_replicas_still_starting():
    policy = QueueTimePolicy(target_queue_us=4_000.0)
    ctx = SimpleNamespace(
        aggregated_metrics={QUEUE_METRIC: {"r1": 6_000.0}},  # 1.5x the target on the one running
        current_num_replicas=1,
        target_num_replicas=3,  # a scale-up to 3 in progress
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=3,
        policy_state={},
    )
    assert policy(ctx)[0] == 3
    ctx.target_num_replicas = 1  # the same reading with none starting: up to 2
    assert policy(ctx)[0] == 2
    ctx.aggregated_metrics = {}  # no reading yet: keep the target
    assert policy(ctx)[0] == 1


def _counters(models: tuple[str, ...], queue_us: float, ensemble_success: float) -> Counters:
    return Counters(
        {m: queue_us for m in models},
        {**{m: ensemble_success for m in models}, ADAPTIVE_RANKING.name: ensemble_success},
    )


def test_autoscaling_reading_windows():
    models = queue_models(REPO_ROOT / "model_repository")
    first = _counters(models, 0.0, 0.0)
    baseline, reading = autoscaling_reading(None, first, models, ongoing=3)
    assert baseline is first and reading == {QUEUE_METRIC: 0.0}
    later = _counters(models, 1_000.0, 10.0)
    baseline, reading = autoscaling_reading(first, later, models, ongoing=3)
    assert baseline is later and reading == {QUEUE_METRIC: pytest.approx(len(models) * 1_000.0 / 10.0)}
    # Requests in flight, none finished in the window: no reading, the window keeps its start.
    stalled = _counters(models, 1_500.0, 10.0)
    assert autoscaling_reading(later, stalled, models, ongoing=2) == (later, {})
    # Nothing in flight and nothing finished: an idle replica has no queue.
    assert autoscaling_reading(later, later, models, ongoing=0) == (later, {QUEUE_METRIC: 0.0})


@pytest.mark.parametrize("target", [0.0, -1.0, float("inf")])
def test_policy_rejects_a_bad_target(target):
    with pytest.raises(ValueError, match="target_queue_us"):
        QueueTimePolicy(target_queue_us=target)


def test_replica_config_from_serve_args():
    cfg = ReplicaConfig.from_args({"config_name": "", "stop_timeout_s": "5"})
    assert cfg.config_name == "" and cfg.stop_timeout_s == 5.0
    with pytest.raises(ValueError, match="unknown application arguments"):
        ReplicaConfig.from_args({"stop_timeout": "5"})


@pytest.mark.parametrize(
    "path, served",
    [
        ("/v2/models/adaptive_ranking/infer", True),
        ("/v2/models/adaptive_ranking/versions/1/infer", True),
        ("/v2/health/ready", True),
        ("/v2/models/adaptive_ranking", True),
        ("/v2/models/ranker/infer", False),  # only the public ensemble
        ("/v2/repository/index", False),  # admin APIs stay unreachable
        ("/v2/systemsharedmemory/status", False),
        ("/v2/models/adaptive_ranking/infer/../../repository/index", False),
    ],
)
def test_forwarded_routes(path, served):
    assert bool(_ROUTES.match(path)) is served


def test_scale_out_and_back_on_a_local_ray_cluster():
    # Its own process: Ray reads its loopback and auth settings when first imported, and a driver
    # that ends with `ray stop` is best kept out of the test process.
    out = REPO_ROOT / "build" / "deploy" / "ray-scale-ci.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "deploy.ray_serve.scale_test", "--preset", "ci", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT)
    assert out.is_file(), f"the scale test wrote no figures (rc {run.returncode}): {run.stderr[-3000:]}"
    figures = json.loads(out.read_text())
    print(json.dumps({k: v for k, v in figures.items() if k not in ("config", "timeline")}))
    print("timeline [s, running, starting, stopping]:", figures["timeline"])
    assert failures(figures) == []
    assert run.returncode == 0, run.stderr[-3000:]
