"""The demo: start Triton on the exported models, rank real requests on every route.

    make demo        # = export the small preset, then: .venv/bin/python -m client.demo

Starts the bundled tritonserver with the CPU profile on free loopback ports, sends
requests drawn from the synthetic world's evaluation seed over gRPC, prints the
ranked items of one request per route and, over ``--requests`` requests, each
route's NDCG@10 against the world's ground truth and its median latency. Stops the
server on exit.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest, infer
from export.config import PRESETS
from export.metrics import ndcg_at_k
from export.world import make_world
from serving.contract import DEFAULT_ROUTE, FIXED_ROUTES, RankingResult
from serving.server.launcher import REPO_ROOT, ServerConfig, check_artifacts, run_server

log = logging.getLogger("client.demo")
ROUTES = (*FIXED_ROUTES, DEFAULT_ROUTE)  # light, heavy, cascade, then auto


def format_ranking(request: RankingRequest, result: RankingResult, relevance: np.ndarray) -> str:
    """A table of the top items: rank, item id, score, the world's true click probability."""
    position = {int(c): i for i, c in enumerate(request.candidate_ids)}
    rows = [f"  {'rank':>4}  {'item':>6}  {'score':>6}  {'true p(click)':>13}"]
    for rank, (item, score) in enumerate(zip(result.top_ids, result.top_scores, strict=True), 1):
        rows.append(f"  {rank:>4}  {int(item):>6}  {score:6.3f}  {relevance[position[int(item)]]:13.3f}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="the preset that was exported")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--requests", type=int, default=30, help="requests per route for the summary")
    parser.add_argument("--candidates", type=int, default=256)
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    check_artifacts(args.model_repository)
    world = make_world(PRESETS[args.preset].world)
    requests = world.sample_requests(args.requests, args.candidates, seed=world.eval_seed + 1)
    with run_server(ServerConfig(model_repository=args.model_repository)) as server:
        log.info("Triton ready: grpc %s, http %s, metrics %s", server.grpc_url, server.http_url, server.metrics_url)
        client = grpcclient.InferenceServerClient(server.grpc_url)
        first = RankingRequest.from_requests(requests, 0)
        for route in ROUTES:
            result = infer(client, first, route=route, top_k=args.top_k)
            print(f"\nrequest 0 (user {int(first.user_features[0])}, history {len(first.history_ids)} items, "
                  f"{len(first.candidate_ids)} candidates): asked route={route}, took route={result.route}")
            print(format_ranking(first, result, requests.relevance[0]))
        print(f"\n{args.requests} requests x {args.candidates} candidates per route (gRPC, one at a time):")
        print(f"  {'route':>8}  {'NDCG@10':>8}  {'p50 ms':>7}  routes taken")
        for route in ROUTES:
            scores, latencies, taken = [], [], []
            for row in range(len(requests)):
                start = time.perf_counter()
                result = infer(client, RankingRequest.from_requests(requests, row), route=route, top_k=args.top_k)
                latencies.append((time.perf_counter() - start) * 1e3)
                scores.append(result.scores)
                taken.append(result.route)
            ndcg = ndcg_at_k(np.stack(scores), requests.relevance, 10)
            counts = ", ".join(f"{r}={taken.count(r)}" for r in sorted(set(taken)))
            print(f"  {route:>8}  {ndcg:8.4f}  {statistics.median(latencies):7.1f}  {counts}")
        client.close()
    log.info("server stopped")


if __name__ == "__main__":
    main()
