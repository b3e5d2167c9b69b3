"""Baselines for the leave-one-out protocol, fitted on the training part only (export/loo.py).

    baselines = fit_baselines(split.train, n_items)
    scores = baselines["cooccurrence"](case)      # (N,) over case.candidate_ids

* ``random``: uniform scores (seeded per user row).
* ``popularity``: how often the item occurs in the training part.
* ``cooccurrence``: item-to-item sequential co-occurrence. ``C[a, b]`` counts how often b follows a
  within the next ``window`` items of a training sequence; a candidate scores
  sum_j C[h_j, c] / (j + 1) over the ``recent`` most recent history items h_0 (latest), h_1, ...,
  plus popularity / (1 + max popularity) so that unseen pairs fall back to popularity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from export.loo import Case

Scorer = Callable[[Case], np.ndarray]


@dataclass(frozen=True)
class CooccurrenceConfig:
    window: int = 3  # successors of an item that count as following it
    recent: int = 5  # history items whose successors score a candidate


def item_counts(train: Sequence[np.ndarray], n_ids: int) -> np.ndarray:
    """(n_ids,) occurrences of each raw item id in the training sequences."""
    parts = [s for s in train if s.size]
    return np.bincount(np.concatenate(parts), minlength=n_ids).astype(np.float64) if parts else np.zeros(n_ids)


def cooccurrence_counts(train: Sequence[np.ndarray], n_ids: int, window: int) -> np.ndarray:
    """(n_ids, n_ids) C[a, b]: times b follows a within ``window`` positions (dense: fine for 1.7k items)."""
    c = np.zeros((n_ids, n_ids), dtype=np.float64)
    for s in train:
        for d in range(1, window + 1):
            if s.size > d:
                np.add.at(c, (s[:-d], s[d:]), 1.0)
    return c


def fit_baselines(
    train: Sequence[np.ndarray], n_ids: int, cfg: CooccurrenceConfig = CooccurrenceConfig(), seed: int = 0
) -> dict[str, Scorer]:
    """{name: scorer} for random, popularity and cooccurrence; ``n_ids`` = max raw item id + 1."""
    pop = item_counts(train, n_ids)
    cooc = cooccurrence_counts(train, n_ids, cfg.window)
    prior = pop / (1.0 + pop.max())  # < 1: breaks ties, never outweighs one co-occurrence

    def random(case: Case) -> np.ndarray:
        return np.random.default_rng([seed, case.user_row]).random(case.candidate_ids.size)

    def popularity(case: Case) -> np.ndarray:
        return pop[case.candidate_ids]

    def cooccurrence(case: Case) -> np.ndarray:
        recent = case.history_ids[::-1][: cfg.recent]  # latest first
        weights = 1.0 / np.arange(1, recent.size + 1)
        return weights @ cooc[np.ix_(recent, case.candidate_ids)] + prior[case.candidate_ids]

    return {"random": random, "popularity": popularity, "cooccurrence": cooccurrence}
