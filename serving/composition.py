"""One request's model chain, written once: embedding -> user tower -> scorer inputs -> cascade.

The Triton ranker, the in-process ranker (serving/inprocess.py), the offline and FP8
evaluations (export/) and the supervisor's probes all build their model inputs here;
``run(model, inputs) -> outputs`` is whatever executes one model (an ONNX Runtime session,
a request to a server). Arrays are NumPy or torch (serving/arrays.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from serving import arrays
from serving.arrays import Array, cascade_merge, top_k_indices

RunFn = Callable[[str, dict[str, Array]], dict[str, Array]]


@dataclass(frozen=True)
class SharedState:
    """One request's user side as the scorers take it (B = 1), in the tower's library and device."""

    user_state: Array  # (1, D)
    history_kv: Array  # (1, L, D)
    history_len: Array  # (1,) int64 = [L]

    @classmethod
    def from_tower(cls, user_state: Array, history_kv: Array) -> SharedState:
        # user_state (1, D), history_kv (L, D) as the user tower returns them; [None] is a view
        return cls(user_state, history_kv[None], arrays.int64_vector([history_kv.shape[0]], like=history_kv))


def scorer_inputs(tier: str, shared: SharedState, candidate_emb: Array) -> dict[str, Array]:
    """One scorer call's inputs: the shared user side as it is (never tiled), n candidates of user row 0."""
    inputs = {
        "user_state": shared.user_state,  # (1, D)
        "candidate_emb": candidate_emb,  # (n, C, E)
        "candidate_user": arrays.int64_zeros(candidate_emb.shape[0], like=candidate_emb),  # (n,)
    }
    if tier == "heavy":
        inputs["history_kv"] = shared.history_kv  # (1, L, D)
        inputs["history_len"] = shared.history_len  # (1,)
    return inputs


@dataclass(frozen=True)
class Chain:
    """A public request after embedding_lookup and user_tower: every model's inputs from there."""

    request: dict[str, Array]  # the ensemble's inputs (embedding_lookup's)
    embeddings: dict[str, Array]  # user_emb (F_U, E), history_emb (L, E), candidate_emb (N, C, E)
    tower: dict[str, Array]  # user_state (1, D), history_kv (L, D)

    @property
    def candidate_emb(self) -> Array:
        return self.embeddings["candidate_emb"]

    @property
    def shared(self) -> SharedState:
        return SharedState.from_tower(self.tower["user_state"], self.tower["history_kv"])

    def tower_inputs(self) -> dict[str, Array]:
        return {"user_emb": self.embeddings["user_emb"], "history_emb": self.embeddings["history_emb"]}

    def scorer_inputs(self, tier: str, candidate_emb: Array | None = None) -> dict[str, Array]:
        """``tier``'s inputs for ``candidate_emb`` (default: all N candidates)."""
        return scorer_inputs(tier, self.shared, self.candidate_emb if candidate_emb is None else candidate_emb)

    def ranker_inputs(self) -> dict[str, Array]:
        return {**self.tower, "candidate_emb": self.candidate_emb, "candidate_ids": self.request["candidate_ids"]}

    def model_inputs(self) -> dict[str, dict[str, Array]]:
        """{model: its inputs} for embedding_lookup, user_tower and both scorers on all N."""
        return {
            "embedding_lookup": self.request,
            "user_tower": self.tower_inputs(),
            "scorer_light": self.scorer_inputs("light"),
            "scorer_heavy": self.scorer_inputs("heavy"),
        }


def compose(run: RunFn, request: dict[str, Array]) -> Chain:
    """Run embedding_lookup and user_tower (once per request) on a public request."""
    embeddings = run("embedding_lookup", request)
    tower = run("user_tower", {"user_emb": embeddings["user_emb"], "history_emb": embeddings["history_emb"]})
    return Chain(request, embeddings, tower)


def cascade(light: Array, m: int, heavy_of: Callable[[Array], Array]) -> Array:
    """A cascade's final scores [N]: heavy re-scores light's top m (``heavy_of(top_idx [m]) -> [m]``),
    merged by ``cascade_merge`` so every re-scored candidate ranks above the rest."""
    top = top_k_indices(light, m)
    return cascade_merge(light, heavy_of(top), top)
