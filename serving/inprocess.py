"""The served composition without a server: the same ONNX files in ONNX Runtime.

    ranker = InProcessRanker(Path("model_repository"))
    result = ranker.rank(arrays, route="cascade", k=10)

Tests compare the server against it per route, perf/ uses it for the serving-overhead ratio.
Each tier scores all its candidates in one call (no micro-batches), so the comparison also
checks that the server's micro-batching changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from serving.arrays import top_k_indices
from serving.composition import Chain, cascade, compose, scorer_inputs, split_scores
from serving.contract import ADAPTIVE_RANKING, ENGINE_MODELS, RankingResult, validate_inputs
from serving.onnx_session import make_session, run_checked
from serving.routing import RoutePolicy


class InProcessRanker:
    def __init__(self, model_repository: Path, intra_op_threads: int = 1, policy: RoutePolicy | None = None) -> None:
        self.policy = policy or RoutePolicy()  # the cascade's M
        self.sessions = {
            name: make_session(model_repository / name / "1" / "model.onnx", intra_op_threads) for name in ENGINE_MODELS
        }

    def run(self, name: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_checked(self.sessions[name], ENGINE_MODELS[name], arrays)

    def chain(self, arrays: dict[str, np.ndarray]) -> Chain:
        """embedding_lookup and user_tower on one public request."""
        return compose(self.run, arrays)

    def score(self, tier: str, chain: Chain, candidate_emb: np.ndarray) -> np.ndarray:
        """Scores [n] of one tier for ``candidate_emb`` [n, C, E]: the user side at B = 1, one call."""
        scores = self.run(f"scorer_{tier}", scorer_inputs(tier, chain.shared, candidate_emb))["scores"]
        return split_scores(tier, scores, [candidate_emb.shape[0]])[0]

    def rank(self, arrays: dict[str, np.ndarray], route: str, k: int) -> RankingResult:
        """One public request (the ensemble's inputs, [1, ...]) on a fixed route: light, heavy or cascade."""
        n = validate_inputs(ADAPTIVE_RANKING, arrays)["N"]
        k = min(k, n)
        chain = self.chain(arrays)
        cand = chain.candidate_emb
        if route == "heavy":
            scores = self.score("heavy", chain, cand)
        elif route in ("light", "cascade"):
            scores = self.score("light", chain, cand)
            if route == "cascade":
                m = self.policy.cascade_size(n, k)
                scores = cascade(scores, m, lambda top: self.score("heavy", chain, cand[top]))
        else:
            raise ValueError(f"route must be light, heavy or cascade in-process, got {route!r}")
        top = top_k_indices(scores, k)
        return RankingResult(arrays["candidate_ids"][0][top], scores[top], scores, route)
