"""The demo on real data: a MovieLens-100k user's next movies, ranked by the real Triton server.

    make demo DATA=ml-100k     # = export.ml100k if nothing is exported yet, then this

Starts tritonserver on ``build/ml-100k/model_repository``, takes one test user (``--user``, a raw
MovieLens user id), prints the last movies they rated and the top 10 of every route with titles,
and where the movie they actually rated next (held out) ranks among their ~1,600 candidates.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest, infer
from export.loo import leave_one_out
from export.ml100k import PRESETS, REPOSITORY
from export.movielens import MovieLens, load_ml100k, ml100k_dir
from serving.contract import DEFAULT_ROUTE, FIXED_ROUTES
from serving.server.launcher import ServerConfig, check_artifacts, run_server

log = logging.getLogger("client.ml100k_demo")
ROUTES = (*FIXED_ROUTES, DEFAULT_ROUTE)
SHOWN_HISTORY = 5


def describe(data: MovieLens, ids: np.ndarray, scores: np.ndarray, target: int) -> str:
    rows = [f"  {'rank':>4}  {'score':>6}  title"]
    for rank, (item, score) in enumerate(zip(ids, scores, strict=True), 1):
        mark = "   <- the movie they rated next" if int(item) == target else ""
        rows.append(f"  {rank:>4}  {score:6.3f}  {data.title_of(int(item))}{mark}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-100k", help="the preset that was exported")
    parser.add_argument("--model-repository", type=Path, default=REPOSITORY)
    parser.add_argument("--user", type=int, default=1, help="raw MovieLens user id")
    parser.add_argument("--top-k", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    check_artifacts(args.model_repository)
    data = load_ml100k(ml100k_dir())
    split = leave_one_out(data, PRESETS[args.preset].history_max)
    by_user = {int(data.users[c.user_row]): c for c in split.test}
    if args.user not in by_user:
        raise SystemExit(f"user {args.user} is not a test user (ids {min(by_user)}..{max(by_user)})")
    case = by_user[args.user]
    request = RankingRequest(**case.fields())
    print(f"user {args.user}: {case.history_ids.size} movies of history, {case.candidate_ids.size} candidates; "
          f"last {SHOWN_HISTORY} rated:")
    for item in case.history_ids[-SHOWN_HISTORY:]:
        print(f"        {data.title_of(int(item))}")
    with run_server(ServerConfig(model_repository=args.model_repository)) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for route in ROUTES:
            result = infer(client, request, route=route, top_k=args.top_k)
            rank = 1 + int(np.sum(result.scores > result.scores[case.target_index]))
            print(f"\nroute {route} (took {result.route}): the held-out next movie ranks {rank} "
                  f"of {case.candidate_ids.size}")
            print(describe(data, result.top_ids, result.top_scores, case.target))
        client.close()


if __name__ == "__main__":
    main()
