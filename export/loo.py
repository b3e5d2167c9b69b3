"""The leave-one-out, full-ranking protocol of the HSTU paper's public-dataset experiments.

    split = leave_one_out(load_ml100k(ml100k_dir()))
    split.test[0].fields()    # one public request: user, history, every candidate

Per user (interactions in time order, export/movielens.py): the last item is the test target, the
second-to-last the validation target, the rest is the training part. A target's history is the at
most ``history_max`` (200) most recent items before it: the test history therefore ends with the
validation target, as in the paper's protocol. Its candidates are every catalogue item the user
has not interacted with before the target, the target included (if the user had seen the target
before, it stays a candidate): about 1,600 on ml-100k, within contract.N_MAX. Candidates are in
item id order; nothing about the target's position depends on the target.

Training (export/next_item.py) reads only ``Split.train``: no validation or test target is in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from export.movielens import MovieLens
from export.world import Requests
from serving import contract

logger = logging.getLogger(__name__)

HISTORY_MAX = 200
MIN_INTERACTIONS = 3  # one training item, a validation and a test target


@dataclass(frozen=True)
class Case:
    """One held-out target: a user's request and where the target is among its candidates."""

    user_row: int  # row in MovieLens.users
    user_features: np.ndarray  # (F_U,) int64
    history_ids: np.ndarray  # (L,) int64, oldest first, 1 <= L <= history_max
    candidate_ids: np.ndarray  # (N,) int64, sorted
    candidate_features: np.ndarray  # (N, F_C) int64
    target_index: int  # candidate_ids[target_index] is the target

    @property
    def target(self) -> int:
        return int(self.candidate_ids[self.target_index])

    def fields(self) -> dict[str, np.ndarray]:
        """The public request's arrays without the batch dim (client.ranking_client.RankingRequest's fields)."""
        return {
            "user_features": self.user_features,
            "history_ids": self.history_ids,
            "candidate_ids": self.candidate_ids,
            "candidate_features": self.candidate_features,
        }

    def as_requests(self) -> Requests:
        """The case as a one-row ``Requests`` (label and relevance 1 on the target) for the PyTorch models."""
        n = self.candidate_ids.size
        onehot = np.zeros((1, n), dtype=np.float32)
        onehot[0, self.target_index] = 1.0
        return Requests(
            user_features=self.user_features[None],
            history_ids=self.history_ids[None],
            history_len=np.array([self.history_ids.size], dtype=np.int64),
            candidate_ids=self.candidate_ids[None],
            candidate_features=self.candidate_features[None],
            labels=onehot,
            relevance=onehot.copy(),
        )


@dataclass(frozen=True)
class Split:
    """Per user row: the training part (oldest first) and the validation and test cases."""

    train: tuple[np.ndarray, ...]  # (T_u,) int64 item ids per user row, all but the last two
    valid: tuple[Case, ...]
    test: tuple[Case, ...]
    history_max: int


def make_case(data: MovieLens, row: int, t: int, history_max: int = HISTORY_MAX) -> Case:
    """The case of user row ``row``'s ``t``-th interaction (0-based, t >= 1) as the target."""
    seq = data.sequence(row)
    if not 1 <= t < seq.size:
        raise ValueError(f"target position must lie in 1..{seq.size - 1} for user row {row}, got {t}")
    if not 1 <= history_max <= contract.L_MAX:
        raise ValueError(f"history_max must lie in 1..{contract.L_MAX}, got {history_max}")
    target = int(seq[t])
    seen = np.isin(data.items, seq[:t]) & (data.items != target)
    candidates = data.items[~seen]
    if candidates.size > contract.N_MAX:
        raise ValueError(f"user row {row}: {candidates.size} candidates exceed N_MAX={contract.N_MAX}")
    return Case(
        user_row=row,
        user_features=data.user_features[row],
        history_ids=np.ascontiguousarray(seq[max(0, t - history_max) : t]),
        candidate_ids=candidates,
        candidate_features=data.features_of(candidates),
        target_index=int(np.searchsorted(candidates, target)),
    )


def leave_one_out(data: MovieLens, history_max: int = HISTORY_MAX) -> Split:
    """The split of the module docstring; users with fewer than 3 interactions are left out (logged)."""
    counts = np.diff(data.seq_start)
    rows = np.flatnonzero(counts >= MIN_INTERACTIONS)
    if rows.size < counts.size:
        logger.info("leave-one-out: %d users with < %d interactions left out", counts.size - rows.size,
                    MIN_INTERACTIONS)
    train = tuple(data.sequence(r)[:-2] if counts[r] >= MIN_INTERACTIONS else data.sequence(r)[:0]
                  for r in range(counts.size))
    valid = tuple(make_case(data, int(r), int(counts[r]) - 2, history_max) for r in rows)
    test = tuple(make_case(data, int(r), int(counts[r]) - 1, history_max) for r in rows)
    return Split(train=train, valid=valid, test=test, history_max=history_max)
