"""The MovieLens-100k test users through the real Triton server, against the in-process composition.

    .venv/bin/python -m client.ml100k_eval        # make export DATA=ml-100k runs it after export.ml100k

Starts the bundled tritonserver (CPU profile) on ``build/ml-100k/model_repository`` (written by
export/ml100k.py), sends one request per test user (N = that user's ~1,600 candidates) on light,
heavy, cascade and auto at two latency budgets, one at a time over gRPC, and records per route the
leave-one-out metrics from the returned ``scores``, the p50 / p99 latency seen by the client and the
routes taken. Each answer is compared with the in-process composition (serving/inprocess.py) on the
same graphs for the route the server took: the largest score difference and the share of users
whose top 10 is identical. The result goes into ``reports/export-ml-100k.json`` under ``served``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest, infer
from export.loo import Case, leave_one_out
from export.metrics import loo_metrics
from export.ml100k import PRESETS, REPORT, REPOSITORY, ROOT, K, served_cascade_m
from export.movielens import load_ml100k, ml100k_dir
from serving.inprocess import InProcessRanker
from serving.routing import RoutePolicy
from serving.server.launcher import ServerConfig, check_artifacts, run_server

log = logging.getLogger("client.ml100k_eval")
BUDGETS_MS = (5.0, 200.0)  # auto: a tight and a loose latency budget
FIXED = ("light", "heavy", "cascade")


def route_plan(budgets: tuple[float, ...] = BUDGETS_MS) -> dict[str, tuple[str, float | None]]:
    """{name in the report: (route, latency budget)}."""
    return {**{r: (r, None) for r in FIXED}, **{f"auto@{b:g}ms": ("auto", b) for b in budgets}}


def served_evaluation(
    repository: Path, cases: list[Case], budgets: tuple[float, ...] = BUDGETS_MS, config_name: str = "cpu"
) -> dict:
    """Every case on every route through a real server started here; metrics, latency, agreement."""
    check_artifacts(repository)
    policy = RoutePolicy(cascade_m=served_cascade_m(repository, config_name))
    oracle = InProcessRanker(repository, policy=policy)
    targets = [c.target_index for c in cases]
    routes: dict[str, dict] = {}
    with run_server(ServerConfig(model_repository=repository, config_name=config_name)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for name, (route, budget) in route_plan(budgets).items():
                scores, latency, taken, diffs, same_top = [], [], [], [], []
                start = time.perf_counter()
                for case in cases:
                    request = RankingRequest(**case.fields())
                    sent = time.perf_counter()
                    result = infer(client, request, route=route, latency_budget_ms=budget, top_k=K)
                    latency.append((time.perf_counter() - sent) * 1e3)
                    want = oracle.rank(request.arrays(), result.route, K)
                    scores.append(result.scores)
                    taken.append(result.route)
                    diffs.append(float(np.max(np.abs(result.scores - want.scores))))
                    same_top.append(bool(np.array_equal(result.top_ids, want.top_ids)))
                routes[name] = {
                    **loo_metrics(scores, targets),
                    "p50_ms": statistics.median(latency),
                    "p99_ms": float(np.percentile(latency, 99)),
                    "routes_taken": {r: taken.count(r) for r in sorted(set(taken))},
                    "max_abs_score_diff_vs_inprocess": max(diffs),
                    "same_top10_as_inprocess": float(np.mean(same_top)),
                    "budget_ms": budget,
                }
                log.info("%s: NDCG@10 %.4f HR@10 %.4f p50 %.1f ms, routes %s, %.0fs", name, routes[name]["ndcg10"],
                         routes[name]["hr10"], routes[name]["p50_ms"], routes[name]["routes_taken"],
                         time.perf_counter() - start)
        finally:
            client.close()
    return {"users": len(cases), "cascade_m": policy.cascade_m, "routes": routes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-100k", help="the preset that was exported")
    parser.add_argument("--model-repository", type=Path, default=REPOSITORY)
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--users", type=int, default=None, help="only the first USERS test users")
    parser.add_argument("--budgets", type=float, nargs=2, default=BUDGETS_MS, help="auto's two budgets (ms)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    split = leave_one_out(load_ml100k(ml100k_dir()), PRESETS[args.preset].history_max)
    served = served_evaluation(args.model_repository, list(split.test[: args.users]), tuple(args.budgets))
    path = args.reports / REPORT
    report = json.loads(path.read_text()) if path.is_file() else {}
    report["served"] = served
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    log.info("served results written to %s", path)


if __name__ == "__main__":
    main()
