"""The ranker's request path, independent of Triton: routing, broadcasting, micro-batches.

``rank()`` takes an async ``ScoreFn`` that runs one scorer call; the ranker's
model.py passes one that issues a BLS request, tests pass one backed by ONNX Runtime.

Arrays: NumPy arrays (CPU profile) or torch tensors on any device (GPU profile, read
from Triton by DLPack); every array operation goes through ``model_repository.tensors``,
so the same code runs on both and the ScoreFn returns the library it was given.

Broadcast: a request's user_state [1, D] and history_kv [1, L, D] go unchanged into
every micro-batch call; only the candidates [n, C, E] are split, and
``candidate_user`` [n] (all zeros) names the one user row they share.

Faults: when the heavy tier fails (``ScorerError``) or runs past the request's
budget inside a cascade or an auto plan, ``rank`` falls back to the light ranking,
reports route "light" and says why in ``RankResult.fallback``. An explicit
``route=heavy`` has nothing to fall back to: its ``ScorerError`` reaches the caller.
Load: Triton gives a ranker instance one request at a time and bounds the queue in
front of it (the config's queue policy); ``RankerState.load`` measures how busy the
instance is, and "auto" plans with the wait that implies (model_repository/load.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np

from model_repository import tensors
from model_repository.load import LoadMeter
from model_repository.ranking import RequestOptions, cascade_merge, micro_batches, top_k_indices
from model_repository.routing import AutoPlan, CostModel, RoutePolicy, plan_auto, settle_auto
from model_repository.tensors import Array

# score_fn(tier, inputs) -> scores [n]; tier is "light" or "heavy"; arrays of one library.
ScoreFn = Callable[[str, dict[str, Array]], Awaitable[Array]]


FALLBACK_REASONS: tuple[str, ...] = ("error", "timeout")  # why a cascade / auto plan fell back to light


class ScorerError(RuntimeError):
    """A scorer call failed (not the client's fault); the message names the scorer."""


@dataclass
class RankerState:
    """What the ranker learns and tracks across requests (one per model instance).

    load  busy intervals of this instance; None = "auto" plans as if nothing queued
    """

    policy: RoutePolicy
    cost: CostModel
    micro_batch: int = 512
    load: LoadMeter | None = None

    def wait_ms(self) -> float:
        """How long a request starting now has likely queued (0 when load-unaware)."""
        return self.load.expected_wait_ms() if self.load is not None else 0.0


def heavy_deadline_ms(options: RequestOptions, heavy_timeout_ms: float) -> float:
    """How long a cascade / auto request waits for its heavy stage: the request's own
    ``latency_budget_ms`` when it sent one, else ``heavy_timeout_ms`` (the default budget
    only guides auto's plan; a cold or briefly busy server must not turn every
    budget-less cascade into light)."""
    return options.latency_budget_ms if options.budget_given else heavy_timeout_ms



@dataclass(frozen=True)
class SharedState:
    """One request's user side, shaped for the scorers (B = 1), in the tower's library and device."""

    user_state: Array  # (1, D)
    history_kv: Array  # (1, L, D)
    history_len: Array  # (1,) int64 = [L]

    @classmethod
    def from_tower(cls, user_state: Array, history_kv: Array) -> SharedState:
        # user_state (1, D), history_kv (L, D) as the user tower returns them; [None] is a view
        return cls(user_state, history_kv[None], tensors.int64_vector([history_kv.shape[0]], like=history_kv))


@dataclass
class RankResult:
    top_idx: Array  # (K,) candidate positions, best first
    scores: Array  # (N,) final scores, consistent with top_idx's order
    route: str
    plan: AutoPlan | None = None
    tier_ms: dict[str, float] = field(default_factory=dict)
    candidates_scored: dict[str, int] = field(default_factory=dict)
    fallback: str | None = None  # "error" | "timeout": the heavy stage was abandoned for light
    fallback_detail: str = ""  # the scorer error or the deadline missed


def scorer_inputs(tier: str, shared: SharedState, candidate_emb: Array) -> dict[str, Array]:
    """Inputs of one scorer call: the shared user side as is, n candidates of user row 0."""
    inputs = {
        "user_state": shared.user_state,  # (1, D)
        "candidate_emb": candidate_emb,  # (n, C, E)
        "candidate_user": tensors.int64_zeros(candidate_emb.shape[0], like=candidate_emb),  # (n,)
    }
    if tier == "heavy":
        inputs["history_kv"] = shared.history_kv  # (1, L, D)
        inputs["history_len"] = shared.history_len  # (1,)
    return inputs


async def score_tier(
    score_fn: ScoreFn, state: RankerState, tier: str, shared: SharedState, candidate_emb: Array
) -> tuple[Array, float]:
    """Scores [n] of ``tier`` over ``candidate_emb`` [n, C, E], micro-batches issued
    concurrently; the wall time feeds the cost model."""
    n = candidate_emb.shape[0]
    start = time.perf_counter()
    parts = await asyncio.gather(
        *(score_fn(tier, scorer_inputs(tier, shared, candidate_emb[s])) for s in micro_batches(n, state.micro_batch))
    )
    elapsed_ms = (time.perf_counter() - start) * 1e3
    scores = tensors.float32(tensors.concatenate(parts))  # (n,) on the first part's device
    if tuple(scores.shape) != (n,):
        raise ScorerError(f"{tier} scorer returned {scores.shape[0]} scores for {n} candidates")
    state.cost.observe(tier, n, elapsed_ms)
    return scores, elapsed_ms


async def _heavy_or_fallback(
    score_fn: ScoreFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,
    deadline: float,
    deadline_ms: float,
    result: RankResult,
) -> Array | None:
    """Heavy scores of ``candidate_emb`` [m, C, E], or None (recorded in ``result``) when
    the heavy tier fails or has not answered by ``deadline`` (time.perf_counter())."""
    remaining_s = deadline - time.perf_counter()
    try:
        if remaining_s <= 0:
            raise TimeoutError
        scores, result.tier_ms["heavy"] = await asyncio.wait_for(
            score_tier(score_fn, state, "heavy", shared, candidate_emb), remaining_s
        )
    except ScorerError as exc:
        result.fallback, result.fallback_detail = "error", str(exc)
        return None
    except TimeoutError:
        result.fallback = "timeout"
        result.fallback_detail = f"scorer_heavy: no answer within {deadline_ms:g} ms"
        return None
    result.candidates_scored["heavy"] = candidate_emb.shape[0]
    return scores


async def rank(
    score_fn: ScoreFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,  # (N, C, E)
    route: str,
    k: int,
    budget_ms: float,
    start: float | None = None,
    deadline_ms: float | None = None,
    waited_ms: float | None = None,
) -> RankResult:
    """Score one request on ``route`` (auto resolves to light / heavy / cascade) and
    return its top k. Cascade: light on all N, heavy on light's top M = cascade_size.

    Inside a cascade or an auto plan the heavy stage must answer within ``deadline_ms``
    (default ``budget_ms``), counted from ``start`` (time.perf_counter() when the request
    arrived; default now); if it fails or is late the light ranking is returned with
    route "light".

    ``waited_ms``: how long the request was under way before ``start`` when the client
    said so (ranking.SENT_AT_PARAM). It is spent budget: auto plans with it and the
    heavy deadline comes that much sooner. Without it auto plans with the instance's
    measured load (``RankerState.wait_ms``) and the deadline counts from ``start``."""
    start = time.perf_counter() if start is None else start
    deadline_ms = budget_ms if deadline_ms is None else deadline_ms
    deadline = start + (deadline_ms - (waited_ms or 0.0)) * 1e-3
    n = candidate_emb.shape[0]
    plan = None
    if route == "auto":
        wait = state.wait_ms() if waited_ms is None else waited_ms
        plan = plan_auto(state.cost, n, k, budget_ms, wait, state.policy)
        route = plan.route
    result = RankResult(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), route, plan)
    scores = None
    if route == "heavy":
        if plan is None:  # asked for heavy: no fallback, its error is the answer
            scores, result.tier_ms["heavy"] = await score_tier(score_fn, state, "heavy", shared, candidate_emb)
            result.candidates_scored["heavy"] = n
        else:
            scores = await _heavy_or_fallback(score_fn, state, shared, candidate_emb, deadline, deadline_ms, result)
            if scores is None:
                route = result.route = "light"
    if scores is None:
        scores, result.tier_ms["light"] = await score_tier(score_fn, state, "light", shared, candidate_emb)
        result.candidates_scored["light"] = n
        if route == "cascade" and plan is not None:
            # light_confidence is one O(N) pass on the host: N floats copied on the torch path
            route = result.route = settle_auto(plan, tensors.to_numpy(scores), k, state.policy)
        if route == "cascade":
            m = plan.m if plan is not None else state.policy.cascade_size(n, k)
            top = top_k_indices(scores, m)
            emb_top = tensors.take(candidate_emb, top)  # (M, C, E)
            heavy = await _heavy_or_fallback(score_fn, state, shared, emb_top, deadline, deadline_ms, result)
            if heavy is None:
                result.route = "light"
            else:
                scores = cascade_merge(scores, heavy, top)
    result.scores = scores
    result.top_idx = top_k_indices(scores, k)
    return result
