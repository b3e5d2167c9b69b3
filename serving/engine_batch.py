"""Several requests in one ONNX Runtime call: the batched engine models of the CPU profile.

Each request brings one user ([1, ...] tensors, validated on its own first). ``embedding_lookup``
is elementwise, so the batch's histories and candidates go in as one row each ([1, sum L],
[1, sum N]) with no padding; ``user_tower`` takes the histories padded to the longest, each
one's end given by ``history_len``. ``gather`` builds the call's inputs, ``scatter`` cuts its
outputs back into each request's tensors. NumPy only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Batching:
    gather: Callable[[Sequence[Arrays]], Arrays]
    scatter: Callable[[Arrays, Sequence[Arrays]], list[Arrays]]


def _offsets(lengths: Sequence[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(lengths).tolist()
    return list(zip([0, *ends[:-1]], ends))


def embedding_gather(requests: Sequence[Arrays]) -> Arrays:
    return {
        "user_features": np.concatenate([r["user_features"] for r in requests]),  # (R, F_U)
        "history_ids": np.concatenate([r["history_ids"] for r in requests], axis=1),  # (1, sum L)
        "candidate_ids": np.concatenate([r["candidate_ids"] for r in requests], axis=1),  # (1, sum N)
        "candidate_features": np.concatenate([r["candidate_features"] for r in requests], axis=1),  # (1, sum N, F_C)
    }


def embedding_scatter(outputs: Arrays, requests: Sequence[Arrays]) -> list[Arrays]:
    hist = _offsets([r["history_ids"].shape[1] for r in requests])
    cand = _offsets([r["candidate_ids"].shape[1] for r in requests])
    return [
        {
            "user_emb": outputs["user_emb"][i : i + 1],  # (1, F_U, E)
            "history_emb": outputs["history_emb"][:, h0:h1],  # (1, L, E)
            "candidate_emb": outputs["candidate_emb"][:, c0:c1],  # (1, N, C, E)
            "history_len": np.array([[h1 - h0]], dtype=np.int64),  # (1, 1): the call's own is sum L
        }
        for i, ((h0, h1), (c0, c1)) in enumerate(zip(hist, cand))
    ]


def tower_gather(requests: Sequence[Arrays]) -> Arrays:
    first = requests[0]["history_emb"]
    longest = max(r["history_emb"].shape[1] for r in requests)
    history = np.zeros((len(requests), longest, first.shape[2]), dtype=first.dtype)  # (R, L_max, E)
    for i, r in enumerate(requests):
        history[i, : r["history_emb"].shape[1]] = r["history_emb"][0]
    return {
        "user_emb": np.concatenate([r["user_emb"] for r in requests]),  # (R, F_U, E)
        "history_emb": history,
        "history_len": np.concatenate([r["history_len"] for r in requests]),  # (R, 1): padding starts there
    }


def tower_scatter(outputs: Arrays, requests: Sequence[Arrays]) -> list[Arrays]:
    return [
        {
            "user_state": outputs["user_state"][i : i + 1],  # (1, D)
            "history_kv": outputs["history_kv"][i : i + 1, : r["history_emb"].shape[1]],  # (1, L, D), padding cut
        }
        for i, r in enumerate(requests)
    ]


BATCHING: dict[str, Batching] = {
    "embedding_lookup": Batching(embedding_gather, embedding_scatter),
    "user_tower": Batching(tower_gather, tower_scatter),
}
