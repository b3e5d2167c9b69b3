"""Served graphs: thin modules that take exactly the served tensors by name.

Each wrapper's forward() arguments and outputs follow serving/contract.py (same
names, same order); these are what go to ONNX, FP8 and TensorRT. Scorers return
probabilities. Shapes below use the signature's symbols.
"""

from __future__ import annotations

import torch
from torch import nn

from export.models import RankingModel


class EmbeddingLookupServing(nn.Module):
    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.embedding = model.embedding

    def forward(
        self,
        user_features: torch.Tensor,
        history_ids: torch.Tensor,
        candidate_ids: torch.Tensor,
        candidate_features: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # (B, F_U), (B, L), (B, N), (B, N, F_C) -> (B, F_U, E), (B, L, E), (B, N, C, E), history_len (B, 1).
        # The lookup is elementwise: the CPU runner batches requests of any L and N as one row.
        user_emb, history_emb, candidate_emb = self.embedding(
            user_features, history_ids, candidate_ids, candidate_features
        )
        # every position of a request is valid; the reshape makes the exported dim a constant 1
        history_len = torch.full_like(history_ids[:, 0], history_ids.shape[1]).reshape(-1, 1)
        return user_emb, history_emb, candidate_emb, history_len


class UserTowerServing(nn.Module):
    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.tower = model.tower

    def forward(
        self, user_emb: torch.Tensor, history_emb: torch.Tensor, history_len: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # (B, F_U, E), (B, L, E), (B, 1) -> user_state (B, D), history_kv (B, L, D); positions past a
        # user's history_len are padding (a batch of different L).
        return self.tower(user_emb, history_emb, history_len[:, 0])


class ScorerLightServing(nn.Module):
    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.light = model.light

    def forward(
        self, user_state: torch.Tensor, candidate_emb: torch.Tensor, candidate_user: torch.Tensor
    ) -> torch.Tensor:
        # (B, D), (N, C, E), (N,) -> scores (N,)
        return torch.sigmoid(self.light(user_state, candidate_emb, candidate_user))


class ScorerHeavyServing(nn.Module):
    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.heavy = model.heavy

    def forward(
        self,
        user_state: torch.Tensor,
        history_kv: torch.Tensor,
        history_len: torch.Tensor,
        candidate_emb: torch.Tensor,
    ) -> torch.Tensor:
        # (B, D), (B, L, D), (B,), (B, N, C, E) -> scores (B, N): each block attends to its own user only
        return torch.sigmoid(self.heavy(user_state, history_kv, history_len, candidate_emb))


class PerCandidateBaselineServing(nn.Module):
    """The naive way, for benchmarks only: every candidate row carries its own copy of
    the user inputs and runs embedding, user tower and heavy scorer on its own."""

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.embedding, self.tower, self.heavy = model.embedding, model.tower, model.heavy

    def forward(
        self,
        user_features: torch.Tensor,
        history_ids: torch.Tensor,
        candidate_ids: torch.Tensor,
        candidate_features: torch.Tensor,
    ) -> torch.Tensor:
        # (N, F_U), (N, L), (N,), (N, F_C) -> scores (N,)
        user_emb, history_emb, candidate_emb = self.embedding(
            user_features, history_ids, candidate_ids, candidate_features
        )  # (N, F_U, E), (N, L, E), (N, C, E)
        user_state, history_kv = self.tower(user_emb, history_emb)  # (N, D), (N, L, D): tower run per row
        logits = self.heavy(user_state, history_kv, None, candidate_emb.unsqueeze(1))  # (N, 1)
        return torch.sigmoid(logits[:, 0])


SERVING_MODULES: dict[str, type[nn.Module]] = {
    "embedding_lookup": EmbeddingLookupServing,
    "user_tower": UserTowerServing,
    "scorer_light": ScorerLightServing,
    "scorer_heavy": ScorerHeavyServing,
    "per_candidate_baseline": PerCandidateBaselineServing,
}
