"""Offline evaluation on the world's evaluation requests: AUC and NDCG@10 per scorer.

    .venv/bin/python -m export.build --preset small   # writes the result into reports/export.json

Scorers compared: light, heavy, cascade (light on all, heavy re-scores light's top M),
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
from model_repository.ranking import cascade_merge, top_k_indices

CASCADE_M = 64


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


def cascade_scores(light: np.ndarray, heavy: np.ndarray, m: int) -> np.ndarray:
    """(R, n) cascade scores: per request, heavy re-scores light's top m."""
    out = np.empty_like(light)
    for r in range(light.shape[0]):
        top = top_k_indices(light[r], min(m, light.shape[1]))
        out[r] = cascade_merge(light[r], heavy[r, top], top)
    return out


def metrics(scores: np.ndarray, requests: Requests) -> dict[str, float]:
    return {"auc": auc(scores, requests.labels), "ndcg10": ndcg_at_k(scores, requests.relevance, 10)}


def evaluate(model: RankingModel, world: World, requests: Requests, seed: int = 0) -> dict[str, dict[str, float]]:
    """{scorer: {"auc": x, "ndcg10": y}} on ``requests``."""
    s = model_scores(model, requests)
    rng = np.random.default_rng(seed)
    table = {
        "light": s["light"],
        "heavy": s["heavy"],
        f"cascade_m{CASCADE_M}": cascade_scores(s["light"], s["heavy"], CASCADE_M),
        "popularity": world.popularity[requests.candidate_ids],
        "random": rng.random(requests.candidate_ids.shape),
    }
    return {name: metrics(scores, requests) for name, scores in table.items()}
