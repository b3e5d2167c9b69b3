"""The app on a local Ray cluster, and the phases of the scale test (deploy/ray_serve/scale_test.py)."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import ray
from ray import serve

from deploy.ray_serve.app import ReplicaConfig, TritonReplica
from deploy.ray_serve.load import Load, Tally
from deploy.ray_serve.local_cluster import local_cluster
from deploy.ray_serve.policy import QueueTimePolicy

log = logging.getLogger("deploy.scale_test")
APP = "ranking"
POLICY = f"{QueueTimePolicy.__module__}:{QueueTimePolicy.__name__}"


class ClusterRun:
    """``with ClusterRun(cfg, repository, port) as run``: the app is deployed with one replica
    behind the Serve proxy at ``run.url``; on exit Serve, Ray and the cluster are stopped."""

    def __init__(self, cfg: object, repository: Path, proxy_port: int) -> None:
        self.cfg, self.repository, self.proxy_port = cfg, repository, proxy_port
        self.url = f"127.0.0.1:{proxy_port}"
        self.timeline: list[list[float | int]] = []  # [seconds, running, starting, stopping] on each change
        self._cluster = local_cluster()
        self._t0 = time.monotonic()

    def __enter__(self) -> ClusterRun:
        address = self._cluster.__enter__()
        try:
            ray.init(address=address, _node_ip_address="127.0.0.1", log_to_driver=False)
            serve.start(http_options={"host": "127.0.0.1", "port": self.proxy_port})
            replica = ReplicaConfig(model_repository=str(self.repository.resolve()), stop_timeout_s=20.0)
            deployment = TritonReplica.options(
                max_ongoing_requests=64,  # above the clients: requests queue in Triton, where the signal sees them
                graceful_shutdown_wait_loop_s=0.5,
                graceful_shutdown_timeout_s=60.0,
                autoscaling_config={
                    "min_replicas": 1,
                    "initial_replicas": 1,
                    "max_replicas": self.cfg.max_replicas,
                    **self.cfg.autoscaling,
                    "policy": {
                        "policy_function": POLICY,
                        "policy_kwargs": {"target_queue_us": self.cfg.target_queue_us},
                    },
                },
            )
            started = time.monotonic()
            serve.run(deployment.bind(asdict(replica)), name=APP, route_prefix="/")
            log.info("app deployed with 1 replica in %.1f s", time.monotonic() - started)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self._t0 = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if ray.is_initialized():
                try:
                    serve.shutdown()
                finally:
                    ray.shutdown()
        finally:
            self._cluster.__exit__(None, None, None)

    def states(self) -> tuple[int, int, int]:
        deployments = serve.status().applications[APP].deployments
        states = next(iter(deployments.values())).replica_states
        return states.get("RUNNING", 0), states.get("STARTING", 0), states.get("STOPPING", 0)

    def sample(self) -> int:
        """Record the replica states if they changed; returns the running replicas."""
        states = self.states()
        if not self.timeline or tuple(self.timeline[-1][1:]) != states:
            self.timeline.append([round(time.monotonic() - self._t0, 1), *states])
            log.info("t=%.1f s replicas running %d, starting %d, stopping %d", self.timeline[-1][0], *states)
        return states[0]

    def wait_until(self, done: Callable[[tuple[int, int, int]], bool], timeout_s: float) -> float | None:
        """Seconds until ``done(states)``, sampling twice a second; None on timeout."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            self.sample()
            if done(self.states()):
                return round(time.monotonic() - start, 1)
            time.sleep(0.5)
        return None

    def hold(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.sample()
            time.sleep(0.5)

    def phases(self, load: Load) -> dict:
        """High load until max replicas, hold; low load until 1 replica, hold. Figures."""
        cfg, top = self.cfg, self.cfg.max_replicas
        high, low = Tally(), Tally()
        t = time.monotonic()
        load.start(cfg.clients, high)
        first_up = self.wait_until(lambda s: s[0] + s[1] > 1, cfg.scale_up_timeout_s)  # a scale-up decided
        done_at_one = high.ok + high.wrong + high.errors
        rps_one = done_at_one / max(1e-9, time.monotonic() - t)
        up_s = self.wait_until(lambda s: s[0] >= top and s[1] == 0, cfg.scale_up_timeout_s)
        mark, done_mark = time.monotonic(), high.ok + high.wrong + high.errors
        self.hold(cfg.hold_s if up_s is not None else 0.0)
        rps_top = (high.ok + high.wrong + high.errors - done_mark) / max(1e-9, time.monotonic() - mark)
        low_load = Load(load.url, load.pool, load.want)
        low_load.start(cfg.trickle_clients, low)
        lost = load.stop()
        t_down = time.monotonic()
        down_s = self.wait_until(lambda s: s == (1, 0, 0), cfg.scale_down_timeout_s)
        mark, done_mark = time.monotonic(), low.ok + low.wrong + low.errors
        self.hold(cfg.tail_s)
        rps_tail = (low.ok + low.wrong + low.errors - done_mark) / max(1e-9, time.monotonic() - mark)
        lost += low_load.stop()
        self.sample()
        tallies = {"high_load": high, "low_load": low}
        return {
            "peak_replicas": max(row[1] for row in self.timeline),
            "first_scale_up_s": first_up,
            "scale_up_to_max_s": None if up_s is None or first_up is None else round(first_up + up_s, 1),
            "scale_down_to_1_s": down_s,
            "scale_down_started_at_s": round(t_down - self._t0, 1),
            "throughput_rps": {
                "high_load_1_replica": round(rps_one, 1),
                f"high_load_{top}_replicas": round(rps_top, 1),
                "low_load_1_replica_after": round(rps_tail, 1),
            },
            "requests": {
                name: {"sent": x.sent, "ok": x.ok, "errors": x.errors, "wrong": x.wrong, "first_error": x.first_error}
                for name, x in tallies.items()
            },
            "lost": lost + sum(x.sent - x.ok - x.errors - x.wrong for x in tallies.values()),
        }

    def replica_info(self) -> dict:
        return serve.get_app_handle(APP).info.remote().result(timeout_s=30)

    def kill_replica_process(self, pid: int) -> None:
        """SIGKILL a replica's worker process: no drain, no __del__ (a crash or an OOM kill)."""
        os.kill(pid, signal.SIGKILL)

    def delete_app(self) -> None:
        serve.delete(APP)
