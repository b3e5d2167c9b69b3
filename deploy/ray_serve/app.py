"""The Ray Serve deployment: each replica is one local Triton server behind a forwarder.

A replica starts tritonserver on free loopback ports with the project's launcher
(``serving.server.launcher.start_server``), forwards KServe v2 HTTP requests for the ensemble
to it byte for byte (JSON or binary tensors: no tensor shapes are known here, so a contract
change needs nothing in this file), reports readiness from the server's /v2/health/ready,
and reports the queue time per ensemble request read from the server's own metrics port
(deploy/queue_signal.py) for ``QueueTimePolicy``. tritonclient's HTTP client therefore talks
to the Serve proxy as to one Triton server.

Shutdown: Serve drains the replica (no new requests, in-flight ones answered), then calls
``__del__`` once (its graceful-shutdown hook, awaited when it is a coroutine): the server is
stopped there within ``stop_timeout_s`` (SIGINT, then SIGKILL of its process group). A
replica killed without that hook is covered by deploy/ray_serve/watchdog.py.

    serve run deploy.ray_serve.app:build_app model_repository=/models config_name=
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import subprocess
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import aiohttp
from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from deploy.queue_signal import Counters, parse_counters, queue_models, queue_signal
from deploy.ray_serve.policy import QUEUE_METRIC
from serving.contract import ADAPTIVE_RANKING
from serving.server.launcher import REPO_ROOT, ServerConfig, start_server, stop_server

log = logging.getLogger("ray.serve")

# What the proxy passes on: inference on the ensemble, health, the ensemble's metadata.
# Admin APIs, other models and shared memory stay unreachable from outside.
_ROUTES = re.compile(rf"^/v2/(health/(ready|live)|models/{ADAPTIVE_RANKING.name}(/versions/\d+)?(/infer|/ready)?)$")
# Headers of the binary tensor extension and of compression, both ways.
_PASSED_HEADERS = ("content-type", "inference-header-content-length", "content-encoding", "accept-encoding")


def autoscaling_reading(
    previous: Counters | None, counters: Counters, models: tuple[str, ...], ongoing: int
) -> tuple[Counters, dict[str, float]]:
    """The replica's reading for the window since ``previous`` (a scrape), and the baseline of
    the next window. ``ongoing``: requests the replica is forwarding now."""
    if previous is None:
        return counters, {QUEUE_METRIC: 0.0}  # the first scrape only opens a window
    signal = queue_signal(previous, counters, models)
    if signal.requests == 0 and ongoing > 0:
        # Requests in flight and none finished (a stalled, saturated server): the queue time is
        # unknown, not 0. No reading; the window grows until a request completes.
        return previous, {}
    return counters, {QUEUE_METRIC: signal.per_request_us}


@dataclass(frozen=True)
class ReplicaConfig:
    """One replica's server. Serve passes these as application arguments (all strings from
    ``serve run``/serveConfigV2 ``args``), see ``build_app``."""

    model_repository: str = str(REPO_ROOT / "model_repository")
    config_name: str = "cpu"  # configs/<name>.pbtxt; "" = config.pbtxt (the GPU profile)
    startup_timeout_s: float = 600.0  # model load (and on a GPU node the first engine build)
    stop_timeout_s: float = 20.0  # SIGINT -> SIGKILL; below Serve's graceful_shutdown_timeout_s
    forward_timeout_s: float = 60.0

    @classmethod
    def from_args(cls, args: dict[str, str]) -> ReplicaConfig:
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(args) - set(known))
        if unknown:
            raise ValueError(f"unknown application arguments {unknown}; known: {sorted(known)}")
        defaults = cls()
        return cls(**{k: type(getattr(defaults, k))(v) for k, v in args.items()})


@serve.deployment(
    # Placeholders for a plain `serve run`; the scale test and the RayService set their own.
    max_ongoing_requests=16,
    graceful_shutdown_wait_loop_s=1.0,
    graceful_shutdown_timeout_s=60.0,
    health_check_period_s=5.0,
    health_check_timeout_s=10.0,
    ray_actor_options={"num_cpus": 0.25},
)
class TritonReplica:
    def __init__(self, config: dict) -> None:
        self.config = ReplicaConfig(**config)
        repository = Path(self.config.model_repository)
        self.models = queue_models(repository)
        self.server = start_server(
            ServerConfig(
                model_repository=repository,
                config_name=self.config.config_name or None,
                startup_timeout_s=self.config.startup_timeout_s,
                stop_timeout_s=self.config.stop_timeout_s,
                # Admin APIs need a key nobody holds: the proxy never forwards them anyway.
                admin_key=secrets.token_urlsafe(16),
            )
        )
        self.base = f"http://{self.server.http_url}"
        try:
            self._start_watchdog()
        except BaseException:
            stop_server(self.server)
            raise
        self.session: aiohttp.ClientSession | None = None
        self.counters = None  # the last scrape, for the next window
        self.ongoing = 0  # requests being forwarded (one event loop: no lock)
        self.stopped = False
        log.info(
            "replica pid %d serves with tritonserver pid %d at %s", os.getpid(), self.server.process.pid, self.base
        )

    def _start_watchdog(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "deploy.ray_serve.watchdog",
            "--replica-pid",
            str(os.getpid()),
            "--server-pid",
            str(self.server.process.pid),
            "--stop-timeout",
            str(self.config.stop_timeout_s),
        ]
        # It forks and its parent exits at once; the child lives on in its own session.
        subprocess.run(cmd, check=True, start_new_session=True, stdin=subprocess.DEVNULL, timeout=30)

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:  # created on the replica's event loop
            timeout = aiohttp.ClientTimeout(total=self.config.forward_timeout_s)
            self.session = aiohttp.ClientSession(timeout=timeout, auto_decompress=False)
        return self.session

    async def __call__(self, request: Request) -> Response:
        path = request.url.path
        if not _ROUTES.match(path):
            return Response(b'{"error":"not served here"}', status_code=404, media_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PASSED_HEADERS}
        self.ongoing += 1
        try:
            async with self._session().request(
                request.method, self.base + path, data=await request.body(), headers=headers
            ) as upstream:
                body = await upstream.read()
                passed = {k: v for k, v in upstream.headers.items() if k.lower() in _PASSED_HEADERS}
                return Response(body, status_code=upstream.status, headers=passed)
        finally:
            self.ongoing -= 1

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Queue µs per ensemble request since the previous reading (Serve calls it every
        metrics_interval_s and averages it over look_back_period_s)."""
        async with self._session().get(self.server.metrics_url) as response:
            counters = parse_counters(await response.text())
        self.counters, reading = autoscaling_reading(self.counters, counters, self.models, self.ongoing)
        return reading

    async def check_health(self) -> None:
        if self.server.process.poll() is not None:
            raise RuntimeError(f"tritonserver exited with code {self.server.process.returncode}")
        async with self._session().get(f"{self.base}/v2/health/ready") as response:
            if response.status != 200:
                raise RuntimeError(f"tritonserver at {self.base} is not ready (HTTP {response.status})")

    def info(self) -> dict[str, object]:
        """Where this replica runs (for tests and operators)."""
        return {"replica_pid": os.getpid(), "server_pid": self.server.process.pid, "http_url": self.server.http_url}

    async def __del__(self) -> None:
        # Serve's graceful-shutdown hook, called once after draining; stop_server is bounded.
        if self.stopped:
            return
        self.stopped = True
        if self.session is not None:
            await self.session.close()
        await asyncio.to_thread(stop_server, self.server)
        log.info("tritonserver pid %d stopped (exit code %s)", self.server.process.pid, self.server.process.returncode)


def build_app(args: dict[str, str]) -> serve.Application:
    """The application, from ``serve run``/serveConfigV2 arguments (ReplicaConfig's fields)."""
    return TritonReplica.bind(asdict(ReplicaConfig.from_args(args)))
