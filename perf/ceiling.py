"""The machine's compute ceiling: the served ONNX graphs run in process, no server, per route.

    .venv/bin/python -m perf.ceiling --n 1024 --seconds 5     # requests/s per route on this machine

One thread per core, each with its own ONNX Runtime sessions (one intra-op thread), ranks world
requests back to back through the same composition the server runs (serving/inprocess.py: one
scorer call per tier, B = 1) for ``seconds``; ONNX Runtime releases the GIL, so the threads
compute in parallel. requests/s = all threads' requests / wall time. Served throughput divided
by this is the share of the machine the serving path turns into ranking.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from client.ranking_client import RankingRequest
from export.config import PRESETS
from export.world import make_world
from perf.inputs import world_requests
from serving.contract import FIXED_ROUTES
from serving.inprocess import InProcessRanker
from serving.routing import RoutePolicy
from serving.server.launcher import REPO_ROOT

log = logging.getLogger(__name__)
TOP_K = 10


@dataclass(frozen=True)
class Ceiling:
    route: str
    n: int
    threads: int
    requests: int
    seconds: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def as_dict(self) -> dict:
        return {**asdict(self), "requests_per_s": round(self.requests_per_s, 1)}


def measure(
    model_repository: Path,
    requests: list[RankingRequest],
    route: str,
    threads: int,
    seconds: float,
    policy: RoutePolicy | None = None,
) -> Ceiling:
    """``threads`` threads ranking ``requests`` on ``route`` for ``seconds`` (after one warm-up pass each)."""
    rankers = [InProcessRanker(model_repository, intra_op_threads=1, policy=policy) for _ in range(threads)]
    counts = [0] * threads
    start_gate, stop = threading.Barrier(threads + 1), threading.Event()

    def work(i: int) -> None:
        for request in requests:  # warm-up: first runs allocate
            rankers[i].rank(request.arrays(), route, TOP_K)
        start_gate.wait()
        j = i
        while not stop.is_set():
            rankers[i].rank(requests[j % len(requests)].arrays(), route, TOP_K)
            counts[i] += 1
            j += 1

    pool = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    start_gate.wait()
    begin = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - begin  # the last request of each thread counts: slightly generous
    ceiling = Ceiling(route, requests[0].candidate_ids.size, threads, sum(counts), elapsed)
    log.info("ceiling %-8s N=%d: %.1f requests/s (%d threads)", route, ceiling.n, ceiling.requests_per_s, threads)
    return ceiling


def measure_routes(
    model_repository: Path,
    preset: str,
    n: int,
    seconds: float,
    threads: int | None = None,
    policy: RoutePolicy | None = None,
    count: int = 8,
) -> dict[str, Ceiling]:
    world = make_world(PRESETS[preset].world)
    requests, _ = world_requests(world, n, count)
    threads = threads or len(os.sched_getaffinity(0))
    return {route: measure(model_repository, requests, route, threads, seconds, policy) for route in FIXED_ROUTES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="the world the requests come from")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="default: one per core")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    result = measure_routes(args.model_repository, args.preset, args.n, args.seconds, args.threads)
    print(json.dumps({r: c.as_dict() for r, c in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
