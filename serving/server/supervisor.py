"""Keep a local tritonserver serving: restart it (same ports) when a Python stub dies or it exits.

2.51 never restarts a dead stub (its model answers "... is not healthy") and model control is
``none``, so recovery is a server restart. Each round checks the server and every stub process,
then sends every model a tiny valid request (scorers directly: a cascade hides a dead heavy
behind its fallback); a dead stub restarts at once, unanswered rounds after
``unresponsive_rounds``, a full queue never. The probes are the one part of ``serving`` that uses
tritonclient (this runs outside the server). ``python -m serving.server --supervise``; as a
library ``with supervised_server(ServerConfig(...)) as sup:`` (``sup.server``, ``sup.restarts``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from serving.composition import compose
from serving.contract import MODELS
from serving.server.launcher import (
    RunningServer,
    ServerConfig,
    StubProcess,
    kill_server,
    resolve_ports,
    start_server,
    stop_server,
    stub_processes,
)

log = logging.getLogger(__name__)

DEAD_STUB_MESSAGE = "is not healthy"  # 2.51: "Stub process '<instance>' is not healthy."
TIMED_OUT = "StatusCode.DEADLINE_EXCEEDED"  # the probe's client_timeout: every queue here is shorter
UNAVAILABLE = "StatusCode.UNAVAILABLE"  # a full queue, or no server at all (connection refused)


@dataclass(frozen=True)
class SupervisorConfig:
    probe_interval_s: float = 5.0
    probe_timeout_s: float = 10.0  # per probe request
    unresponsive_rounds: int = 3  # rounds of timeouts / refused connections before a restart
    max_restarts: int = 5  # within restart_window_s; past it the supervisor gives up (a crash loop)
    restart_window_s: float = 600.0
    start_attempts: int = 5  # per restart: the ports may still be held for a moment, a start may fail


@dataclass(frozen=True)
class Restart:
    reason: str
    detected_at: float  # time.monotonic() when the watchdog saw the failure
    ready_at: float  # time.monotonic() when the new server was ready

    @property
    def downtime_s(self) -> float:
        """Detection to ready; the failure itself happened up to one probe interval earlier."""
        return self.ready_at - self.detected_at


class SupervisorGaveUp(RuntimeError):
    """More than ``max_restarts`` restarts within ``restart_window_s``."""


def _infer(
    client: grpcclient.InferenceServerClient,
    model: str,
    arrays: dict[str, np.ndarray],
    timeout_s: float,
    parameters: dict[str, str] | None = None,
) -> grpcclient.InferResult:
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(np.ascontiguousarray(array))
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput(n) for n in MODELS[model].output_names]
    return client.infer(model, inputs, outputs=outputs, parameters=parameters, client_timeout=timeout_s)


def _public_request() -> dict[str, np.ndarray]:
    """One user, a history of 3, 2 candidates: the smallest valid request."""
    return {
        "user_features": np.array([1, 2, 3, 0], dtype=np.int64),
        "history_ids": np.array([5, 6, 7], dtype=np.int64),
        "candidate_ids": np.array([11, 12], dtype=np.int64),
        "candidate_features": np.array([[1, 2, 3], [2, 3, 4]], dtype=np.int64),
    }


class Prober:
    """Tiny valid requests for every model of a repository. The float inputs (embeddings,
    user state) come from the server's own embedding_lookup and user_tower on the first
    healthy round and are reused: their sizes (E, D) depend on the exported preset."""

    def __init__(self, models: list[str], timeout_s: float) -> None:
        self.models, self.timeout_s = models, timeout_s
        self.requests: dict[str, tuple[dict[str, np.ndarray], dict[str, str] | None]] | None = None

    def _build(self, client: grpcclient.InferenceServerClient) -> None:
        public = _public_request()
        n = public["candidate_ids"].size

        def run(model: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = _infer(client, model, arrays, self.timeout_s)
            return {name: result.as_numpy(name) for name in MODELS[model].output_names}

        chain = compose(run, public)
        light = {"route": "light"}
        requests = {name: (inputs, None) for name, inputs in chain.model_inputs().items()}
        requests["per_candidate_baseline"] = (
            {
                "user_features": np.tile(public["user_features"], (n, 1)),
                "history_ids": np.tile(public["history_ids"], (n, 1)),
                "candidate_ids": public["candidate_ids"],
                "candidate_features": public["candidate_features"],
            },
            None,
        )
        requests["ranker"] = (chain.ranker_inputs(), light)
        requests["adaptive_ranking"] = (public, light)
        self.requests = {m: requests[m] for m in self.models if m in requests}

    def probe(self, client: grpcclient.InferenceServerClient) -> dict[str, InferenceServerException]:
        """{model: the error it answered}; empty when every model answered."""
        if self.requests is None:
            try:
                self._build(client)
            except InferenceServerException as e:
                return {"embedding_lookup/user_tower (probe inputs)": e}
        failures = {}
        for model, (arrays, parameters) in self.requests.items():
            try:
                _infer(client, model, arrays, self.timeout_s, parameters)
            except InferenceServerException as e:
                failures[model] = e
                if str(e.status()) == TIMED_OUT:
                    break  # the next models would wait out their timeouts too
        return failures


@dataclass(frozen=True)
class Verdict:
    """What one probe round says: restart now (a dead stub), or a round without answers."""

    dead_stub: str | None = None
    unanswered: str | None = None


def judge(failures: dict[str, InferenceServerException], server_live: Callable[[], bool]) -> Verdict:
    """Sort a round's failures. ``server_live`` is asked only when a probe got UNAVAILABLE:
    from a live server that is a full queue (busy, not broken), else nobody answered."""
    stubs = [f"{m}: {e.message()}" for m, e in failures.items() if DEAD_STUB_MESSAGE in (e.message() or "")]
    if stubs:
        return Verdict(dead_stub="; ".join(stubs))
    timed_out = [f"{m}: {e.message()}" for m, e in failures.items() if str(e.status()) == TIMED_OUT]
    refused = [f"{m}: {e.message()}" for m, e in failures.items() if str(e.status()) == UNAVAILABLE]
    if timed_out or (refused and not server_live()):
        return Verdict(unanswered=(timed_out + refused)[0])
    return Verdict()


def repository_models(repository: Path) -> list[str]:
    """The models of ``repository`` that the signature knows (probes are built from it)."""
    return [m for m in MODELS if (Path(repository) / m).is_dir()]


def _dead(stub: StubProcess, server_pid: int) -> bool:
    try:
        state = Path(f"/proc/{stub.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        group = os.getpgid(stub.pid)
    except (OSError, ProcessLookupError):
        return True
    # A dead stub stays a zombie until the server reaps it; after that its pid may be reused.
    return state in ("Z", "X") or group != server_pid


class Supervisor:
    def __init__(self, cfg: ServerConfig, sup: SupervisorConfig = SupervisorConfig()) -> None:
        self.cfg = resolve_ports(cfg)  # fixed from the start: restarts come back on the same ports
        self.sup = sup
        self.prober = Prober(repository_models(cfg.model_repository), sup.probe_timeout_s)
        self.restarts: list[Restart] = []
        self._server: RunningServer | None = None
        self._started = False
        self._stubs: list[StubProcess] = []
        self._unresponsive = 0

    @property
    def server(self) -> RunningServer:
        if self._server is None:
            raise RuntimeError("the supervised server is not running")
        return self._server

    def start(self) -> RunningServer:
        """Start the server (RuntimeError / TimeoutError as start_server) and note its stubs."""
        server = start_server(self.cfg, append_log=self._started)  # one log across restarts
        self._server, self._started, self._unresponsive = server, True, 0
        self._stubs = stub_processes(server.process.pid)
        log.info("supervising pid %d: %d stubs, probing %s", server.process.pid, len(self._stubs), self.prober.models)
        return server

    def stop(self) -> None:
        if self._server is not None:
            stop_server(self._server)
            self._server = None

    def check(self) -> str | None:
        """One watchdog round: the reason to restart, or None."""
        server = self.server
        if server.process.poll() is not None:
            return f"tritonserver exited with code {server.process.returncode}"
        dead = [s.instance for s in self._stubs if _dead(s, server.process.pid)]
        if dead:
            return f"Python stub died: {', '.join(dead)}"
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            failures = self.prober.probe(client)

            def live() -> bool:
                try:
                    return client.is_server_live(client_timeout=self.sup.probe_timeout_s)
                except InferenceServerException:
                    return False

            verdict = judge(failures, live)
        if verdict.dead_stub:
            return verdict.dead_stub
        if not verdict.unanswered:
            for model, e in failures.items():
                log.warning("probe of %s failed (not restarting for it): %s %s", model, e.status(), e.message())
        self._unresponsive = self._unresponsive + 1 if verdict.unanswered else 0
        if self._unresponsive >= self.sup.unresponsive_rounds:
            return f"no answer for {self._unresponsive} probe rounds ({verdict.unanswered})"
        return None

    def restart(self, reason: str) -> Restart:
        detected = time.monotonic()
        window = [r for r in self.restarts if detected - r.detected_at < self.sup.restart_window_s]
        if len(window) >= self.sup.max_restarts:
            raise SupervisorGaveUp(
                f"{len(window)} restarts in {self.sup.restart_window_s:.0f} s, the last for: {reason}"
            )
        log.warning("restarting tritonserver (pid %d): %s", self.server.process.pid, reason)
        kill_server(self.server, self._stubs)
        self._server = None
        for attempt in range(1, self.sup.start_attempts + 1):
            try:
                self.start()
                break
            except (RuntimeError, TimeoutError) as e:  # start_server stopped what it started
                if attempt == self.sup.start_attempts:
                    raise SupervisorGaveUp(f"tritonserver did not start in {attempt} attempts: {e}") from e
                log.error("restart attempt %d failed, retrying in 1 s: %s", attempt, e)
                time.sleep(1.0)
        restart = Restart(reason, detected, time.monotonic())
        self.restarts.append(restart)
        log.warning("tritonserver back after %.1f s (restart %d)", restart.downtime_s, len(self.restarts))
        return restart

    def run(self, stop: threading.Event) -> None:
        """Check every probe_interval_s and restart on failure until ``stop`` is set.
        Raises SupervisorGaveUp on a crash loop."""
        while not stop.wait(self.sup.probe_interval_s):
            reason = self.check()
            if reason is not None and not stop.is_set():
                self.restart(reason)


@contextmanager
def supervised_server(cfg: ServerConfig, sup: SupervisorConfig = SupervisorConfig()) -> Iterator[Supervisor]:
    """Start the server, run the watchdog in a thread, stop both on exit. A watchdog that
    gave up or failed is re-raised on exit."""
    supervisor = Supervisor(cfg, sup)
    supervisor.start()
    stop, errors = threading.Event(), []

    def watch() -> None:
        try:
            supervisor.run(stop)
        except Exception as e:  # reported on exit, in the caller's thread
            log.exception("supervisor stopped")
            errors.append(e)

    thread = threading.Thread(target=watch, name="triton-supervisor", daemon=True)
    thread.start()
    try:
        yield supervisor
    finally:
        stop.set()
        thread.join()
        supervisor.stop()
    if errors:
        raise errors[0]


def supervise(cfg: ServerConfig, sup: SupervisorConfig = SupervisorConfig()) -> int:
    """The command line's loop (in this thread): 1 when it gives up; Ctrl-C ends it."""
    supervisor = Supervisor(cfg, sup)
    server = supervisor.start()
    log.info("HTTP http://%s gRPC %s metrics %s; Ctrl-C stops", server.http_url, server.grpc_url, server.metrics_url)
    try:
        supervisor.run(threading.Event())
    except SupervisorGaveUp as e:
        log.error("giving up: %s", e)
        return 1
    finally:
        supervisor.stop()
    return 0
