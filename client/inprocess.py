"""The served composition called in-process: the same ONNX files, no server.

    ranker = InProcessRanker(Path("model_repository"))
    result = ranker.rank(arrays, route="cascade", k=10)

Tests compare the server against it (same numbers, per route) and perf/ uses it
for the serving-overhead ratio. Routes follow the ranker: light and heavy score all
N; cascade re-scores light's top M = max(cascade_m, k) with heavy. Candidates are
scored in one call per tier here (no micro-batches): the comparison also checks
that the server's micro-batching does not change results.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from client.ranking_client import RankingResult
from export.signature import ADAPTIVE_RANKING, ENGINE_MODELS, validate_inputs
from model_repository.engine import make_session, run_checked
from model_repository.pipeline import SharedState, scorer_inputs
from model_repository.ranking import cascade_merge, top_k_indices


class InProcessRanker:
    def __init__(self, model_repository: Path, intra_op_threads: int = 1) -> None:
        self.sessions = {
            name: make_session(model_repository / name / "1" / "model.onnx", intra_op_threads)
            for name in ENGINE_MODELS
        }

    def run(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_checked(self.sessions[name], ENGINE_MODELS[name], arrays)

    def shared_state(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Embeddings and the user tower's shared state of one public request."""
        emb = self.run("embedding_lookup", arrays)
        tower = self.run("user_tower", emb)
        return {**emb, **tower}

    def score(self, tier: str, state: dict[str, np.ndarray], candidate_emb: np.ndarray) -> np.ndarray:
        """Scores [n] of one tier: user side at B = 1, candidates of user row 0."""
        shared = SharedState.from_tower(state["user_state"], state["history_kv"])
        return self.run(f"scorer_{tier}", scorer_inputs(tier, shared, candidate_emb))["scores"]

    def rank(self, arrays: dict[str, np.ndarray], route: str, k: int, cascade_m: int = 128) -> RankingResult:
        """One public request (ensemble inputs) on a fixed route: light, heavy or cascade."""
        sizes = validate_inputs(ADAPTIVE_RANKING, arrays)
        n, k = sizes["N"], min(k, sizes["N"])
        state = self.shared_state(arrays)
        cand = state["candidate_emb"]
        if route == "heavy":
            scores = self.score("heavy", state, cand)
        elif route in ("light", "cascade"):
            scores = self.score("light", state, cand)
            if route == "cascade":
                top = top_k_indices(scores, min(n, max(cascade_m, k)))
                scores = cascade_merge(scores, self.score("heavy", state, cand[top]), top)
        else:
            raise ValueError(f"route must be light, heavy or cascade in-process, got {route!r}")
        top = top_k_indices(scores, k)
        return RankingResult(arrays["candidate_ids"][top], scores[top], scores, route)
