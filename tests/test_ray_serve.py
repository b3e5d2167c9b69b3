"""Ray Serve: the queue-time policy, the app's arguments and forwarded routes, and the scale
test on a local Ray cluster (deploy/ray_serve/scale_test.py, preset "ci"; ``make deploy-check``
runs "full"): 1 -> 3 -> 1 real tritonserver replicas under load, every answer equal to a single
server's, none lost, a SIGKILLed replica's server stopped by the watchdog, none left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deploy.ray_serve.app import _ROUTES, ReplicaConfig
from deploy.ray_serve.policy import QueueTimePolicy, desired_replicas
from deploy.ray_serve.verdict import failures
from serving.server.launcher import REPO_ROOT


@pytest.mark.parametrize(
    "current, mean_us, want",
    [(1, 0.0, 1), (1, 45_000.0, 3), (3, 15_500.0, 3), (3, 20_000.0, 4), (3, 2_000.0, 1), (2, 13_000.0, 2)],
    ids=["idle", "three-times-target", "within-tolerance", "above", "well-below", "just-below-band"],
)
def test_desired_replicas(current, mean_us, want):
    assert desired_replicas(current, mean_us, target_queue_us=15_000.0, tolerance=0.15) == want


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
