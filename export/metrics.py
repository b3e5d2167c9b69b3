"""Ranking metrics in pure NumPy: rank-based AUC and NDCG@k; HR@k, NDCG@k and MRR of one target.

Both are exact (no sampling) and vectorised: ``auc`` sorts once (O(M log M) for M
scores, fine for the ~640k train rows of the ``small`` preset); ``ndcg_at_k`` sorts
each of the R requests' n scores (R x n, e.g. 300 x 256 for ``small`` eval).
"""

from __future__ import annotations

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (1-D), tied values sharing the average of their ranks."""
    n = values.shape[0]
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    new_run = np.flatnonzero(np.diff(sorted_values)) + 1
    starts = np.concatenate(([0], new_run))
    ends = np.concatenate((new_run, [n]))
    run_rank = (starts + ends + 1) / 2.0  # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` against 0/1 ``labels`` (any equal shapes, flattened).

    Rank-based (Mann-Whitney U): the probability that a random positive outscores a
    random negative, ties counting one half. Raises ValueError for mismatched shapes,
    non-finite scores, labels other than 0/1, or labels that are all one class.
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if np.shape(scores) != np.shape(labels):
        raise ValueError(f"scores shape {np.shape(scores)} != labels shape {np.shape(labels)}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite, got {int(np.sum(~np.isfinite(s)))} non-finite values")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10].tolist()}")
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"AUC needs both classes, got {n_pos} positives and {n_neg} negatives")
    ranks = _average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def ndcg_at_k(scores: np.ndarray, gains: np.ndarray, k: int = 10) -> float:
    """Mean NDCG@k over requests. ``scores`` and ``gains`` are (R, n); gains are >= 0.

    DCG@k = sum_{i<k} gain[rank i] / log2(i + 2) (linear gain), normalised by the DCG of
    the gains sorted descending. Ties in scores are broken by the lower candidate index
    (stable argsort of -scores). ``k`` larger than n uses all n. Requests whose gains are
    all zero have no ideal ranking and are left out of the mean; ValueError if none is left.
    """
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(gains, dtype=np.float64)
    if s.ndim != 2 or s.shape != g.shape:
        raise ValueError(f"scores and gains must both be (R, n), got {s.shape} and {g.shape}")
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if not (np.all(np.isfinite(s)) and np.all(np.isfinite(g))):
        raise ValueError("scores and gains must be finite")
    if np.any(g < 0):
        raise ValueError(f"gains must be >= 0, got min {g.min()}")
    kk = min(int(k), s.shape[1])
    discount = 1.0 / np.log2(np.arange(kk) + 2.0)
    top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
    dcg = np.take_along_axis(g, top, axis=1) @ discount
    ideal = -np.sort(-g, axis=1)[:, :kk] @ discount
    valid = ideal > 0
    if not valid.any():
        raise ValueError(f"all {g.shape[0]} requests have zero gains; NDCG is undefined")
    return float(np.mean(dcg[valid] / ideal[valid]))


LOO_KS = (10, 50)  # HR@k and NDCG@k of the leave-one-out protocol (export/loo.py)


def target_metrics(scores: np.ndarray, target_index: int, ks: tuple[int, ...] = LOO_KS) -> dict[str, float]:
    """HR@k, NDCG@k and reciprocal rank of one target among ``scores`` (N,), one relevant item.

    With g candidates scoring above the target and e others tying with it, the target's rank is
    taken as uniform over g+1 .. g+e+1 (a random order among ties) and each metric is its
    expectation, so a constant scorer earns chance figures, not the best or worst rank.
    HR@k = P(rank <= k), NDCG@k = E[1 / log2(rank + 1); rank <= k] (the ideal DCG is 1),
    RR = E[1 / rank].
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or not 0 <= target_index < s.size:
        raise ValueError(f"need scores (N,) and 0 <= target_index < N, got {s.shape} and {target_index}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"scores must be finite, got {int(np.sum(~np.isfinite(s)))} non-finite values")
    st = s[target_index]
    greater = int(np.sum(s > st))
    ties = int(np.sum(s == st)) - 1
    ranks = np.arange(greater + 1, greater + ties + 2, dtype=np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks <= k
        out[f"hr{k}"] = float(hit.mean())
        out[f"ndcg{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def per_user_metrics(
    scores: list[np.ndarray], target_index: list[int], ks: tuple[int, ...] = LOO_KS
) -> dict[str, np.ndarray]:
    """``target_metrics`` of every user: {hr10, ndcg10, hr50, ndcg50, mrr: (U,) float64}."""
    if len(scores) != len(target_index) or not scores:
        raise ValueError(f"need as many score vectors as targets (>= 1), got {len(scores)} and {len(target_index)}")
    per_user = [target_metrics(s, t, ks) for s, t in zip(scores, target_index)]
    return {key: np.array([m[key] for m in per_user]) for key in per_user[0]}


def loo_metrics(scores: list[np.ndarray], target_index: list[int], ks: tuple[int, ...] = LOO_KS) -> dict[str, float]:
    """Means of ``target_metrics`` over users (each its own N); keys hr10, ndcg10, hr50, ndcg50, mrr."""
    return {key: float(v.mean()) for key, v in per_user_metrics(scores, target_index, ks).items()}


def paired_bootstrap(a: np.ndarray, b: np.ndarray, resamples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """How sure the mean of ``a`` exceeds that of ``b``, both (U,) per-user values of the same users:
    the mean difference, its 95% percentile interval over ``resamples`` resamplings of the users, and
    the share of resamplings in which the difference is <= 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal (U,) arrays, U >= 1, got {a.shape} and {b.shape}")
    diff = a - b
    idx = np.random.default_rng(seed).integers(diff.size, size=(resamples, diff.size))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "ci95_low": float(lo), "ci95_high": float(hi),
            "p_not_above": float(np.mean(means <= 0))}
