"""Offline evaluation on the world's evaluation requests: AUC and NDCG@10 per scorer.

    .venv/bin/python -m export.build --preset small   # writes the result into reports/export.json

Scorers compared: light, heavy, cascade (light on all, heavy re-scores light's top M, the
served rule: serving.routing.RoutePolicy),
a popularity baseline (the world's prior item popularity) and random. AUC is over the
observed clicks; NDCG@10 uses the true click probability as the graded relevance.
"""

from __future__ import annotations

import numpy as np
import torch

from export.metrics import auc, ndcg_at_k
from export.models import RankingModel
from export.train import to_tensors
from export.world import Requests, World
from serving.composition import cascade
from serving.routing import RoutePolicy

K = 10  # NDCG@K, and the K that the cascade's M covers (the ranker's default_top_k)


@torch.no_grad()
def model_scores(model: RankingModel, requests: Requests, batch: int = 64) -> dict[str, np.ndarray]:
    """Light and heavy click probabilities (R, n) for every request."""
    model.eval()
    light, heavy = [], []
    for start in range(0, len(requests), batch):
        part = requests.subset(slice(start, start + batch))
        lo, hi = model(**to_tensors(part))
        light.append(torch.sigmoid(lo).numpy())
        heavy.append(torch.sigmoid(hi).numpy())
    return {"light": np.concatenate(light), "heavy": np.concatenate(heavy)}


def cascade_scores(light: np.ndarray, heavy: np.ndarray, policy: RoutePolicy) -> np.ndarray:
    """(R, n) cascade scores: per request, heavy re-scores light's top M = policy.cascade_size(n, K)."""
    m = policy.cascade_size(light.shape[1], K)
    return np.stack([cascade(light[r], m, lambda top, r=r: heavy[r, top]) for r in range(light.shape[0])])


def metrics(scores: np.ndarray, requests: Requests) -> dict[str, float]:
    return {"auc": auc(scores, requests.labels), "ndcg10": ndcg_at_k(scores, requests.relevance, K)}


def evaluate(
    model: RankingModel, world: World, requests: Requests, seed: int = 0, policy: RoutePolicy | None = None
) -> dict[str, dict[str, float]]:
    """{scorer: {"auc": x, "ndcg10": y}} on ``requests``; the cascade's M as served (``policy``)."""
    policy = policy or RoutePolicy()
    s = model_scores(model, requests)
    rng = np.random.default_rng(seed)
    table = {
        "light": s["light"],
        "heavy": s["heavy"],
        f"cascade_m{policy.cascade_m}": cascade_scores(s["light"], s["heavy"], policy),
        "popularity": world.popularity[requests.candidate_ids],
        "random": rng.random(requests.candidate_ids.shape),
    }
    return {name: metrics(scores, requests) for name, scores in table.items()}
