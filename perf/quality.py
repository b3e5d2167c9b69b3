"""Measurements beside perf_analyzer: served NDCG@10 per route, probes, in-process latency.

    ndcg = served_ndcg(client, world, n=1024, count=32, routes=ROUTES)      # {route: {"ndcg10", "taken"}}
    ms = inprocess_p50_ms(Path("model_repository"), requests, route="heavy", repeats=30)

NDCG@10 is computed from the ``scores`` output of real served requests against the
world's ground-truth relevance (export/metrics.py), with requests drawn from a seed
that neither training nor the perf inputs use. ``probe_ms`` times single requests
(after a warm-up) so the sweep can estimate, before running perf_analyzer, how long
a point takes. The in-process figure is the same ONNX composition called directly
(serving/inprocess.py), median of repeated calls, for the serving-overhead ratio.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest, infer
from export.metrics import ndcg_at_k
from export.world import World
from perf.inputs import tiled, world_requests
from serving.contract import PER_CANDIDATE_BASELINE
from serving.inprocess import InProcessRanker

log = logging.getLogger(__name__)

NDCG_SEED = 20_000  # sample_requests seed of the NDCG requests (+ N)
NDCG_K = 10


def served_ndcg(
    client: grpcclient.InferenceServerClient, world: World, n: int, count: int, routes: tuple[str, ...]
) -> dict[str, dict[str, object]]:
    """Per route: NDCG@10 of the served scores over ``count`` requests of ``n`` candidates,
    and how often each route was actually taken (``auto`` picks one per request)."""
    requests, relevance = world_requests(world, n, count, seed=NDCG_SEED + n)
    out: dict[str, dict[str, object]] = {}
    for route in routes:
        scores, taken = [], Counter()
        for request in requests:
            result = infer(client, request, route=route)
            scores.append(result.scores)
            taken[result.route] += 1
        ndcg = ndcg_at_k(np.stack(scores), relevance, k=NDCG_K)
        out[route] = {"ndcg10": ndcg, "taken": dict(taken)}
        log.info("NDCG@%d %-8s %.4f over %d requests (N=%d), taken %s", NDCG_K, route, ndcg, count, n, dict(taken))
    return out


def _median_ms(call: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def probe_ms(
    client: grpcclient.InferenceServerClient,
    request: RankingRequest,
    baseline: bool = False,
    route: str | None = None,
    repeats: int = 3,
) -> float:
    """Median served latency of ``request`` (ensemble, or the per-candidate baseline) after one warm-up call."""
    if not baseline:
        return _median_ms(lambda: infer(client, request, route=route), repeats)
    arrays = tiled(request)
    inputs = []
    for spec in PER_CANDIDATE_BASELINE.inputs:
        tensor = grpcclient.InferInput(spec.name, list(arrays[spec.name].shape), spec.dtype)
        tensor.set_data_from_numpy(np.ascontiguousarray(arrays[spec.name]))
        inputs.append(tensor)
    outputs = [grpcclient.InferRequestedOutput("scores")]
    return _median_ms(lambda: client.infer(PER_CANDIDATE_BASELINE.name, inputs, outputs=outputs), repeats)


def inprocess_p50_ms(
    model_repository: Path, requests: list[RankingRequest], route: str, repeats: int, threads: int
) -> float:
    """Median latency of the in-process composition on ``route``, cycling through ``requests``."""
    ranker = InProcessRanker(model_repository, intra_op_threads=threads)
    counter = iter(range(10**9))

    def call() -> object:
        return ranker.rank(requests[next(counter) % len(requests)].arrays(), route=route, k=NDCG_K)

    ms = _median_ms(call, repeats, warmup=len(requests))
    log.info("in-process %s p50 %.2f ms (N=%d, %d calls, %d threads)", route, ms, len(requests[0].candidate_ids),
             repeats, threads)
    return ms
