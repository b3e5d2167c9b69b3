"""One request's model chain, written once: embedding -> user tower -> scorer inputs -> cascade.

The Triton ranker, the in-process ranker (serving/inprocess.py), the offline and FP8
evaluations (export/) and the supervisor's probes all build their model inputs here;
``run(model, inputs) -> outputs`` is whatever executes one model (an ONNX Runtime session,
a request to a server). Arrays are NumPy or torch (serving/arrays.py). The scorer calls take
several users at once: light a flat candidate list with ``candidate_user``, heavy one padded
block of candidates per user row; the user side is never tiled per candidate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serving import arrays
from serving.arrays import Array, cascade_merge, top_k_indices

RunFn = Callable[[str, dict[str, Array]], dict[str, Array]]


@dataclass(frozen=True)
class SharedState:
    """One request's user side as the tower returned it (B = 1), in its library and device."""

    user_state: Array  # (1, D)
    history_kv: Array  # (1, L, D)

    @property
    def history_length(self) -> int:
        return int(self.history_kv.shape[1])


def scorer_inputs(tier: str, shared: SharedState, candidate_emb: Array) -> dict[str, Array]:
    """One user's scorer call: the user side as it is (B = 1), its n candidates [n, C, E]."""
    return light_inputs([shared], [candidate_emb]) if tier == "light" else heavy_inputs([shared], [candidate_emb])


def _join(parts: Sequence[Array]) -> Array:
    """Concatenate along axis 0; a single part is passed as it is (no copy)."""
    return parts[0] if len(parts) == 1 else arrays.concatenate(list(parts))


def light_inputs(users: Sequence[SharedState], candidates: Sequence[Array]) -> dict[str, Array]:
    """scorer_light for several users: user_state [B, D], their candidates one after another
    [sum n_b, C, E] and ``candidate_user`` naming each one's row."""
    return {
        "user_state": _join([u.user_state for u in users]),  # (B, D)
        "candidate_emb": _join(candidates),  # (sum n_b, C, E)
        "candidate_user": arrays.int64_repeat([c.shape[0] for c in candidates], like=candidates[0]),  # (sum n_b,)
    }


def heavy_inputs(users: Sequence[SharedState], candidates: Sequence[Array]) -> dict[str, Array]:
    """scorer_heavy for several users: row b holds user b's history padded to the longest
    (history_len says where it ends) and its candidates as one block padded to the largest."""
    if len(users) == 1:  # no padding: the tower's arrays as they are
        history_kv, block = users[0].history_kv, candidates[0][None]
    else:
        history_kv = arrays.pad_stack([u.history_kv[0] for u in users], max(u.history_length for u in users))
        block = arrays.pad_stack(list(candidates), max(c.shape[0] for c in candidates))
    return {
        "user_state": _join([u.user_state for u in users]),  # (B, D)
        "history_kv": history_kv,  # (B, L_max, D)
        "history_len": arrays.int64_vector([u.history_length for u in users], like=users[0].history_kv),  # (B,)
        "candidate_emb": block,  # (B, n_max, C, E)
    }


def split_scores(tier: str, scores: Array, counts: Sequence[int]) -> list[Array]:
    """Each user's scores [n_b] from one call's output: light [sum n_b], heavy [B, n_max]."""
    if tier == "heavy":
        return [scores[b, :n] for b, n in enumerate(counts)]
    bounds = [0]
    for n in counts:
        bounds.append(bounds[-1] + n)
    return [scores[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass(frozen=True)
class Chain:
    """A public request after embedding_lookup and user_tower: every model's inputs from there."""

    request: dict[str, Array]  # the ensemble's inputs [1, ...] (embedding_lookup's)
    embeddings: dict[str, Array]  # user_emb (1, F_U, E), history_emb (1, L, E), candidate_emb (1, N, C, E), history_len
    tower: dict[str, Array]  # user_state (1, D), history_kv (1, L, D)

    @property
    def candidate_emb(self) -> Array:
        return self.embeddings["candidate_emb"][0]  # (N, C, E)

    @property
    def shared(self) -> SharedState:
        return SharedState(self.tower["user_state"], self.tower["history_kv"])

    def tower_inputs(self) -> dict[str, Array]:
        return {k: self.embeddings[k] for k in ("user_emb", "history_emb", "history_len")}

    def scorer_inputs(self, tier: str, candidate_emb: Array | None = None) -> dict[str, Array]:
        """``tier``'s inputs for ``candidate_emb`` [n, C, E] (default: all N candidates)."""
        return scorer_inputs(tier, self.shared, self.candidate_emb if candidate_emb is None else candidate_emb)

    def ranker_inputs(self) -> dict[str, Array]:
        return {
            **self.tower,
            "candidate_emb": self.embeddings["candidate_emb"],
            "candidate_ids": self.request["candidate_ids"],
        }

    def model_inputs(self) -> dict[str, dict[str, Array]]:
        """{model: its inputs} for embedding_lookup, user_tower and both scorers on all N."""
        return {
            "embedding_lookup": self.request,
            "user_tower": self.tower_inputs(),
            "scorer_light": self.scorer_inputs("light"),
            "scorer_heavy": self.scorer_inputs("heavy"),
        }


def compose(run: RunFn, request: dict[str, Array]) -> Chain:
    """Run embedding_lookup and user_tower (once per request) on a public request [1, ...]."""
    embeddings = run("embedding_lookup", {k: v for k, v in request.items() if k != "top_k"})
    tower = run("user_tower", {k: embeddings[k] for k in ("user_emb", "history_emb", "history_len")})
    return Chain(request, embeddings, tower)


def cascade(light: Array, m: int, heavy_of: Callable[[Array], Array]) -> Array:
    """A cascade's final scores [N]: heavy re-scores light's top m (``heavy_of(top_idx [m]) -> [m]``),
    merged by ``cascade_merge`` so every re-scored candidate ranks above the rest."""
    top = top_k_indices(light, m)
    return cascade_merge(light, heavy_of(top), top)
