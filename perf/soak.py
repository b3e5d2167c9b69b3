"""Soak test: many requests at high concurrency across every route; errors, answers, memory.

    python -m perf.soak                                   # 10,000 requests at concurrency 32 (make soak)
    python -m perf.soak --requests 600 --json out.json    # the short version tests/test_overload.py runs
    python -m perf.soak --load-unaware                    # auto without load awareness (load_window_ms 0)

It starts the bundled Triton server on a copy of the model repository (or uses
``--url``), sends a pool of world requests cycling light / heavy / cascade / auto
(N in 16, 100, 700) from one asyncio gRPC client with ``--concurrency`` in flight,
and reports:

- errors (any error answer or timeout) and answers that differ from the in-process
  composition of the route the server reports (every answer is checked: the pool's
  expected rankings are computed once per route);
- resident memory (VmRSS) of the server and of each Python stub, after a warm-up and
  at the end, and its growth;
- the auto requests' budget-miss rate (client-side latency > ``--budget-ms``) and the
  routes auto took. Auto requests carry their send time (``sent_at_unix_ms``, as the
  client library sends it with a budget), so the ranker knows how much budget the queues
  before it used. ``--load-unaware`` sends no send time and sets the ranker's
  ``load_window_ms`` to 0, so auto plans as if the server were idle: compare the miss rates.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import tempfile
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.grpc.aio as grpcaio

from client.ranking_client import (
    MODEL_NAME,
    RankingRequest,
    build_inputs,
    request_parameters,
    requested_outputs,
    result_from_response,
)
from export.config import PRESETS
from export.world import make_world
from perf.repository import ranker_config, repository_copy
from serving.contract import DEFAULT_ROUTE, FIXED_ROUTES, SENT_AT_PARAM
from serving.inprocess import InProcessRanker
from serving.server.launcher import REPO_ROOT, ServerConfig, check_artifacts, run_server

log = logging.getLogger(__name__)

ROUTES = (*FIXED_ROUTES, DEFAULT_ROUTE)
SIZES = (16, 100, 700)
TOP_K = 10
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class SoakReport:
    requests: int
    concurrency: int
    wall_s: float
    errors: int
    wrong_answers: int
    routes_taken: dict[str, int]
    auto_requests: int
    auto_budget_ms: float
    auto_budget_misses: int
    auto_routes: dict[str, int]
    load_aware: bool
    p50_ms: float
    p99_ms: float
    rss_mb_before: dict[str, float] = field(default_factory=dict)
    rss_mb_after: dict[str, float] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    ranker_counters: dict[str, float] = field(default_factory=dict)  # deltas of ranker_* counters (server side)

    @property
    def auto_miss_rate(self) -> float:
        return self.auto_budget_misses / self.auto_requests if self.auto_requests else 0.0

    @property
    def rss_growth_mb(self) -> dict[str, float]:
        return {k: self.rss_mb_after.get(k, 0.0) - v for k, v in self.rss_mb_before.items()}

    def as_dict(self) -> dict:
        return {**asdict(self), "auto_miss_rate": self.auto_miss_rate, "rss_growth_mb": self.rss_growth_mb}


def process_rss_mb(pgid: int) -> dict[str, float]:
    """VmRSS (MB) of every process in group ``pgid``: 'tritonserver' and one entry per stub (by model)."""
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: pgrp
                continue
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            rss_kb = int(re.search(r"VmRSS:\s+(\d+)", (entry / "status").read_text())[1])
        except (OSError, ValueError, TypeError, IndexError):
            continue
        name = "tritonserver"
        if cmd and cmd[0].endswith(b"triton_python_backend_stub"):
            model = Path(cmd[1].decode()).parent.parent.name if len(cmd) > 1 else "?"
            name = f"stub:{model}"
        while name in out:
            name += "'"
        out[name] = rss_kb / 1024
    return dict(sorted(out.items()))


# The ranker sends its metrics every metrics_interval_ms (250 ms): wait that long and more before reading.
METRICS_SETTLE_S = 1.0


def ranker_counters(metrics_url: str | None) -> dict[str, float]:
    """ranker_* counters on the metrics port, as {'name{labels}': value}; {} without a URL."""
    if not metrics_url:
        return {}
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("ranker_") and "_total" in line:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def make_pool(size: int, seed: int) -> list[RankingRequest]:
    world = make_world(PRESETS["tiny"].world)
    pool = []
    for i in range(size):
        n = SIZES[i % len(SIZES)]
        pool.append(RankingRequest.from_requests(world.sample_requests(1, n, seed + i), 0))
    return pool


def expected_pool(ranker: InProcessRanker, pool: list[RankingRequest]) -> list[dict[str, tuple]]:
    out = []
    for request in pool:
        per_route = {}
        for route in FIXED_ROUTES:
            r = ranker.rank(request.arrays(), route, TOP_K)
            per_route[route] = (r.top_ids, r.scores)
        out.append(per_route)
    return out


async def send_all(
    url: str,
    pool: list[RankingRequest],
    count: int,
    concurrency: int,
    budget_ms: float,
    timeout_s: float,
    routes: tuple[str, ...] = ROUTES,
    stamp: bool = True,
) -> list[tuple[int, str, object, float]]:
    """(pool index, route asked, RankingResult or the exception, latency s) per request, in order.
    ``stamp``: auto requests carry their send time (``sent_at_unix_ms``), as the client library sends it."""
    client = grpcaio.InferenceServerClient(url)
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> tuple[int, str, object, float]:
        index, route = i % len(pool), routes[i % len(routes)]
        inputs = build_inputs(grpcaio, pool[index].arrays(), TOP_K)
        async with semaphore:
            # stamped as it is sent: the client's own wait for a free slot is not the server's
            params = request_parameters(route, budget_ms if route == "auto" else None)
            if not stamp:
                params.pop(SENT_AT_PARAM, None)
            start = time.perf_counter()
            try:
                response = await client.infer(
                    MODEL_NAME, inputs, outputs=requested_outputs(grpcaio), parameters=params, client_timeout=timeout_s
                )
                result: object = result_from_response(response)
            except Exception as exc:  # an error answer is a counted outcome, not a crash of the soak
                result = exc
            return index, route, result, time.perf_counter() - start

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count))))
    finally:
        await client.close()


def run_soak(
    url: str,
    pgid: int | None,
    ranker: InProcessRanker,
    requests: int,
    concurrency: int,
    budget_ms: float,
    load_aware: bool,
    pool_size: int = 48,
    timeout_s: float = 60.0,
    routes: tuple[str, ...] = ROUTES,
    metrics_url: str | None = None,
) -> SoakReport:
    pool = make_pool(pool_size, seed=5000)
    expected = expected_pool(ranker, pool)
    asyncio.run(send_all(url, pool, min(requests, 4 * len(ROUTES) * 4), concurrency, budget_ms, timeout_s))  # warm-up
    before = process_rss_mb(pgid) if pgid else {}
    time.sleep(METRICS_SETTLE_S)
    counters_before = ranker_counters(metrics_url)
    start = time.perf_counter()
    outcomes = asyncio.run(send_all(url, pool, requests, concurrency, budget_ms, timeout_s, routes, stamp=load_aware))
    wall_s = time.perf_counter() - start
    after = process_rss_mb(pgid) if pgid else {}
    time.sleep(METRICS_SETTLE_S)
    counters = {k: v - counters_before.get(k, 0.0) for k, v in ranker_counters(metrics_url).items()}
    errors, wrong, samples = 0, 0, []
    routes, auto_routes, misses, latencies = Counter(), Counter(), 0, []
    for index, route, result, latency_s in outcomes:
        if isinstance(result, Exception):
            errors += 1
            if len(samples) < 5:
                samples.append(f"{route}: {result}")
            continue
        latencies.append(latency_s * 1e3)
        routes[result.route] += 1
        if route == "auto":
            auto_routes[result.route] += 1
            misses += latency_s * 1e3 > budget_ms
        ok_route = result.route == route or route == "auto" or (route == "cascade" and result.route == "light")
        top_ids, scores = expected[index].get(result.route, (None, None))
        if (
            not ok_route
            or top_ids is None
            or not (
                np.array_equal(result.top_ids, top_ids) and np.allclose(result.scores, scores, rtol=RTOL, atol=ATOL)
            )
        ):
            wrong += 1
    lat = np.array(latencies) if latencies else np.zeros(1)
    return SoakReport(
        requests=requests,
        concurrency=concurrency,
        wall_s=wall_s,
        errors=errors,
        wrong_answers=wrong,
        routes_taken=dict(sorted(routes.items())),
        auto_requests=sum(1 for _, r, _, _ in outcomes if r == "auto"),
        auto_budget_ms=budget_ms,
        auto_budget_misses=int(misses),
        auto_routes=dict(sorted(auto_routes.items())),
        load_aware=load_aware,
        p50_ms=float(np.percentile(lat, 50)),
        p99_ms=float(np.percentile(lat, 99)),
        rss_mb_before=before,
        rss_mb_after=after,
        error_samples=samples,
        ranker_counters={k: v for k, v in sorted(counters.items()) if v},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--url", help="gRPC host:port of a running server (default: start one on a copy)")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--budget-ms", type=float, default=50.0, help="latency_budget_ms of the auto requests")
    parser.add_argument("--load-unaware", action="store_true", help="no send time, load_window_ms 0: auto ignores load")
    parser.add_argument("--routes", default=",".join(ROUTES), help="routes to cycle through (comma-separated)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    check_artifacts(args.model_repository)
    # answers are checked against the composition with the served cascade M
    ranker = InProcessRanker(args.model_repository, policy=ranker_config(args.model_repository).policy)
    with ExitStack() as stack:
        if args.url:
            url, pgid, metrics_url = args.url, None, None
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
            unaware = {"load_window_ms": "0"} if args.load_unaware else None
            repo = repository_copy(args.model_repository, tmp / "repo", unaware)
            server = stack.enter_context(run_server(ServerConfig(model_repository=repo, log_path=tmp / "server.log")))
            url, pgid, metrics_url = server.grpc_url, server.process.pid, server.metrics_url
        report = run_soak(
            url,
            pgid,
            ranker,
            args.requests,
            args.concurrency,
            args.budget_ms,
            load_aware=not args.load_unaware,
            routes=tuple(args.routes.split(",")),
            metrics_url=metrics_url,
        )
    summary = report.as_dict()
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0 if report.errors == 0 and report.wrong_answers == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
