"""Next-item training of the ranking model on a leave-one-out training part (export/loo.py).

    model, info = train_next_item(preset, data, split)     # export/ml100k.py calls it

Examples: every position t >= 1 of every user's training part; the history is the at most
``history_max`` items before t (oldest first), the positive is item t. Each example ranks its
positive against ``negatives`` items drawn uniformly from the catalogue, redrawn where one equals
the positive or, with ``unseen_negatives``, where the user had interacted with it before t: full
ranking's candidates are exactly the unseen items, so the model spends nothing on learning that
already-seen items are negatives (which would also teach it that resembling the history is bad).

Initialisation (``pmi_window`` > 0): the item-id rows of the embedding table start from the top
singular vectors of the items' positive pointwise mutual information in the training sequences
(co-occurrence within ``pmi_window`` positions), scaled to the table's init std: 943 users are
few, and these rows carry the item-to-item structure the co-occurrence baseline lives on from the
first step.

Objective, per tier (light and heavy share the embedding table and the user tower, as served):
sampled softmax cross-entropy of the positive among its 1 + negatives candidates (what full ranking
rewards), plus ``bce_weight`` x binary cross-entropy over the same candidates, which anchors the
logits' scale: the served scores are sigmoids, and unanchored softmax logits drift to where float32
sigmoids saturate and tie at 1.0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from export.baselines import cooccurrence_counts
from export.config import EmbeddingConfig, HeavyConfig, LightConfig, UserTowerConfig
from export.loo import Split
from export.models import RankingModel
from export.movielens import MovieLens
from export.train import row_usage as requests_row_usage
from export.train import to_tensors
from export.world import Requests
from serving.contract import ITEM_FEATURE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NextItemConfig:
    steps: int = 2_000
    batch_requests: int = 64
    negatives: int = 127
    lr: float = 3e-3
    weight_decay: float = 1e-5
    bce_weight: float = 1.0
    unseen_negatives: bool = False  # negatives only among items the user has not seen before t
    pmi_window: int = 0  # > 0: item-id rows start from PMI-SVD vectors of co-occurrence within this window
    pmi_std: float = 0.05  # the PMI vectors' scale: the table's random init std
    seed: int = 0


@dataclass(frozen=True)
class RealDataPreset:
    """The models and training for one real data set (the same architectures as the world's)."""

    name: str
    embedding: EmbeddingConfig
    tower: UserTowerConfig
    light: LightConfig
    heavy: HeavyConfig
    train: NextItemConfig
    history_max: int = 200


def build_model(preset: RealDataPreset, cardinalities: dict[str, int]) -> RankingModel:
    torch.manual_seed(preset.train.seed)
    return RankingModel(preset.embedding, preset.tower, preset.light, preset.heavy, cardinalities)


def positions(split: Split) -> np.ndarray:
    """(P, 2) int64 (user row, t) of every training example: t >= 1 within the row's training part."""
    rows = [np.stack([np.full(s.size - 1, r), np.arange(1, s.size)], axis=1) for r, s in enumerate(split.train)
            if s.size > 1]
    return np.concatenate(rows).astype(np.int64)


def example_requests(
    data: MovieLens, split: Split, pos: np.ndarray, negatives: np.ndarray, history_max: int
) -> Requests:
    """Requests for examples ``pos`` (B, 2): candidates [positive, *negatives[b]], label 1 on the positive."""
    b = pos.shape[0]
    lengths = np.minimum(pos[:, 1], history_max)
    history = np.zeros((b, int(lengths.max())), dtype=np.int64)
    positive = np.empty(b, dtype=np.int64)
    for i, (row, t) in enumerate(pos):
        seq = split.train[row]
        history[i, : lengths[i]] = seq[t - lengths[i] : t]
        positive[i] = seq[t]
    candidates = np.concatenate([positive[:, None], negatives], axis=1)  # (B, 1 + K)
    labels = np.zeros(candidates.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    return Requests(
        user_features=data.user_features[pos[:, 0]],
        history_ids=history,
        history_len=lengths.astype(np.int64),
        candidate_ids=candidates,
        candidate_features=data.features_of(candidates),
        labels=labels,
        relevance=labels.copy(),
    )


def draw_negatives(rng: np.random.Generator, items: np.ndarray, positive: np.ndarray, k: int) -> np.ndarray:
    """(B, k) items drawn uniformly, none equal to its row's positive."""
    out = items[rng.integers(items.size, size=(positive.size, k))]
    while (clash := out == positive[:, None]).any():
        out[clash] = items[rng.integers(items.size, size=int(clash.sum()))]
    return out


def draw_unseen_negatives(
    rng: np.random.Generator, items: np.ndarray, split: Split, pos: np.ndarray, k: int
) -> np.ndarray:
    """(B, k) items drawn uniformly among those example b's user had not interacted with before t,
    the positive excluded: the candidates that full ranking puts against the target."""
    seen = np.zeros((pos.shape[0], int(items.max()) + 1), dtype=bool)  # (B, n_ids)
    for i, (row, t) in enumerate(pos):
        seen[i, split.train[row][: t + 1]] = True  # history and the positive
    out = items[rng.integers(items.size, size=(pos.shape[0], k))]
    while (clash := seen[np.arange(pos.shape[0])[:, None], out]).any():
        out[clash] = items[rng.integers(items.size, size=int(clash.sum()))]
    return out


def pmi_vectors(train: Sequence[np.ndarray], n_ids: int, window: int, dim: int) -> np.ndarray:
    """(n_ids, dim) item vectors from the training sequences: the truncated SVD (U sqrt(S)) of the
    positive pointwise mutual information of items occurring within ``window`` positions of each
    other (either order). Item ids that never occur get zero rows."""
    c = cooccurrence_counts(train, n_ids, window)
    c = c + c.T  # (n_ids, n_ids) symmetric counts
    total, row = c.sum(), c.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(c * total / (row * row.T))
    ppmi = np.where(np.isfinite(pmi), np.maximum(pmi, 0.0), 0.0)
    u, s, _ = np.linalg.svd(ppmi)  # singular values in descending order
    return u[:, :dim] * np.sqrt(s[:dim])


@torch.no_grad()
def init_item_rows(model: RankingModel, items: np.ndarray, vectors: np.ndarray, std: float) -> None:
    """Set the embedding rows of raw ``items`` to their ``vectors`` (rescaled to ``std``)."""
    v = vectors[items]
    v = v / max(float(v.std()), 1e-12) * std
    rows = model.embedding.rows(torch.from_numpy(items)[:, None], (ITEM_FEATURE,))[:, 0]  # (I,) hashed rows
    model.embedding.table[rows] = torch.from_numpy(v).float()


def tier_loss(logits: torch.Tensor, labels: torch.Tensor, bce_weight: float) -> torch.Tensor:
    """Sampled softmax CE of column 0 (the positive) + bce_weight x BCE; logits, labels (B, 1 + K)."""
    ce = F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long))
    return ce + bce_weight * F.binary_cross_entropy_with_logits(logits, labels)


def train_next_item(model: RankingModel, data: MovieLens, split: Split, preset: RealDataPreset) -> dict[str, float]:
    """Train ``model`` in place on ``split.train``; logs progress; returns the final losses and wall time."""
    cfg = preset.train
    rng = np.random.default_rng(cfg.seed)
    pos = positions(split)
    if cfg.pmi_window > 0:
        vectors = pmi_vectors(split.train, int(data.items.max()) + 1, cfg.pmi_window, model.embedding.dim)
        init_item_rows(model, data.items, vectors, cfg.pmi_std)
        log.info("item rows start from PMI-SVD vectors (window %d)", cfg.pmi_window)
    log.info("next-item training: %d examples, %d steps x %d, %d negatives each", len(pos), cfg.steps,
             cfg.batch_requests, cfg.negatives)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    model.train()
    start, recent = time.perf_counter(), []
    light = heavy = float("nan")
    for step in range(1, cfg.steps + 1):
        batch_pos = pos[rng.integers(len(pos), size=cfg.batch_requests)]
        if cfg.unseen_negatives:
            negatives = draw_unseen_negatives(rng, data.items, split, batch_pos, cfg.negatives)
        else:
            positive = np.array([split.train[r][t] for r, t in batch_pos], dtype=np.int64)
            negatives = draw_negatives(rng, data.items, positive, cfg.negatives)
        req = example_requests(data, split, batch_pos, negatives, preset.history_max)
        lo, hi = model(**to_tensors(req))  # (B, 1 + K) logits each
        labels = torch.from_numpy(req.labels)
        loss_light, loss_heavy = tier_loss(lo, labels, cfg.bce_weight), tier_loss(hi, labels, cfg.bce_weight)
        opt.zero_grad(set_to_none=True)
        (loss_light + loss_heavy).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent.append((loss_light.item(), loss_heavy.item()))
        if step % max(cfg.steps // 20, 1) == 0 or step == cfg.steps:
            light, heavy = (float(x) for x in np.mean(recent, axis=0))
            log.info("step %d/%d  loss light %.4f heavy %.4f  %.0fs", step, cfg.steps, light, heavy,
                     time.perf_counter() - start)
            recent = []
    model.eval()
    return {"loss_light": light, "loss_heavy": heavy, "train_seconds": time.perf_counter() - start,
            "examples": float(len(pos))}


def row_usage(model: RankingModel, data: MovieLens, split: Split, history_max: int, chunk: int = 2048) -> torch.Tensor:
    """Table-row lookups of every training example (its history and its positive), for pruning."""
    pos = positions(split)
    total = torch.zeros(model.embedding.total_rows, dtype=torch.int64)
    for a in range(0, len(pos), chunk):
        part = pos[a : a + chunk]
        req = example_requests(data, split, part, np.empty((len(part), 0), dtype=np.int64), history_max)
        total += requests_row_usage(model, req)
    return total
