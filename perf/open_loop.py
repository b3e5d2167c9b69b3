"""Open-loop load: requests arrive as a Poisson process at a fixed rate, whatever the server does.

    .venv/bin/python -m perf.open_loop --url 127.0.0.1:8001 --rate 200 --seconds 10 --route auto --budget-ms 50

Unlike a closed loop (a fixed number of requests in flight), arrivals do not wait for answers,
so past saturation the queues grow and the latency shows it, the way MLPerf's Server scenario
loads a recommender. One asyncio gRPC client sends world requests (N candidates each) at
exponentially distributed gaps; each answer is kept with its latency (send to answer), the route
taken and its NDCG@10 against the world's ground truth. With a budget the client stamps
``sent_at_unix_ms`` (the client library does), so the ranker knows what queueing cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import tritonclient.grpc.aio as grpcaio

from client.ranking_client import MODEL_NAME, build_inputs, request_parameters, requested_outputs, result_from_response
from export.config import PRESETS
from export.metrics import ndcg_at_k
from export.world import World, make_world
from perf.inputs import world_requests

log = logging.getLogger(__name__)

POOL_SEED = 30_000  # sample_requests seed of the open-loop pool (+ N): not the train, eval or perf inputs'
TOP_K = 10


@dataclass
class OpenLoopReport:
    route: str
    n: int
    offered_per_s: float
    budget_ms: float | None
    sent: int
    answered: int
    errors: int
    seconds: float  # first send to last answer
    p50_ms: float | None
    p99_ms: float | None
    over_budget: int  # answered later than budget_ms after it was sent (errors not counted)
    routes_taken: dict[str, int] = field(default_factory=dict)
    ndcg10: float | None = None
    error_samples: list[str] = field(default_factory=list)

    @property
    def achieved_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def miss_rate(self) -> float | None:
        """Share of the requests sent that missed the budget or failed."""
        if self.budget_ms is None or self.sent == 0:
            return None
        return (self.over_budget + self.errors) / self.sent

    def as_dict(self) -> dict:
        return {**asdict(self), "achieved_per_s": round(self.achieved_per_s, 2), "miss_rate": self.miss_rate}


@dataclass(frozen=True)
class Pool:
    """Requests to cycle through, built once (inputs serialised per send), with their ground truth."""

    inputs: list[list]
    relevance: np.ndarray  # (count, N)
    n: int


def make_pool(world: World, n: int, count: int) -> Pool:
    requests, relevance = world_requests(world, n, count, seed=POOL_SEED + n)
    return Pool([build_inputs(grpcaio, r.arrays(), TOP_K) for r in requests], relevance, n)


async def run(
    url: str,
    pool: Pool,
    rate: float,
    seconds: float,
    route: str,
    budget_ms: float | None = None,
    seed: int = 0,
    timeout_s: float = 30.0,
) -> OpenLoopReport:
    """Send Poisson(rate) arrivals for ``seconds`` and wait for every answer (or its timeout)."""
    if rate <= 0 or seconds <= 0:
        raise ValueError(f"rate and seconds must be > 0, got {rate}, {seconds}")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=int(rate * seconds * 1.5) + 10)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals < seconds]
    client = grpcaio.InferenceServerClient(url)
    outputs = requested_outputs(grpcaio)
    latencies, routes, ndcgs, errors = [], Counter(), [], []

    async def one(i: int) -> None:
        row = i % len(pool.inputs)
        params = request_parameters(route, budget_ms)  # stamped now: sent_at_unix_ms with a budget
        start = time.perf_counter()
        try:
            response = await client.infer(
                MODEL_NAME, pool.inputs[row], outputs=outputs, parameters=params, client_timeout=timeout_s
            )
        except Exception as exc:  # an error answer is a counted outcome of the load, not a crash
            errors.append(str(exc)[:200])
            return
        latencies.append((time.perf_counter() - start) * 1e3)
        result = result_from_response(response)
        routes[result.route] += 1
        ndcgs.append(ndcg_at_k(result.scores[None], pool.relevance[row][None], k=TOP_K))

    tasks = []
    begin = time.perf_counter()
    try:
        for i, at in enumerate(arrivals):
            delay = begin + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    elapsed = time.perf_counter() - begin
    lat = np.array(latencies)
    over = int((lat > budget_ms).sum()) if budget_ms is not None and lat.size else 0
    report = OpenLoopReport(
        route=route,
        n=pool.n,
        offered_per_s=rate,
        budget_ms=budget_ms,
        sent=len(arrivals),
        answered=len(latencies),
        errors=len(errors),
        seconds=elapsed,
        p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
        p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
        over_budget=over,
        routes_taken=dict(sorted(routes.items())),
        ndcg10=float(np.mean(ndcgs)) if ndcgs else None,
        error_samples=sorted(set(errors))[:3],
    )
    log.info(
        "open loop %s N=%d at %.0f/s: achieved %.1f/s, p50 %s p99 %s ms, %d errors, miss %s, routes %s, NDCG@10 %s",
        route, pool.n, rate, report.achieved_per_s, _f(report.p50_ms), _f(report.p99_ms), report.errors,
        report.miss_rate, report.routes_taken, _f(report.ndcg10, 4),
    )  # fmt: skip
    return report


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="gRPC host:port")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="the world of the requests")
    parser.add_argument("--n", type=int, default=1024)
    parser.add_argument("--rate", type=float, required=True, help="offered requests/s (Poisson)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--route", default="auto")
    parser.add_argument("--budget-ms", type=float, default=None)
    parser.add_argument("--pool", type=int, default=32, help="distinct requests cycled through")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    pool = make_pool(make_world(PRESETS[args.preset].world), args.n, args.pool)
    report = asyncio.run(run(args.url, pool, args.rate, args.seconds, args.route, args.budget_ms))
    print(json.dumps(report.as_dict(), indent=2))
    return 0 if report.errors == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
