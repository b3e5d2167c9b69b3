"""The ranker's request path, independent of Triton: one function per route, a batch at a time.

``rank_batch`` ranks every request of one execute() together: auto's routes are planned for the
batch (routing.plan_batch), then each request runs its route as its own coroutine and asks a
shared ScoreBatcher for scores, which makes one scorer call per tier (per micro-batch) for all
of them. The user side is never tiled per candidate. When heavy fails or runs late inside a
cascade or an auto plan, that request's light ranking is its answer (route "light", ``fallback``
says why); an explicit ``heavy`` has no fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from serving import arrays
from serving.arrays import Array, cascade_merge, top_k_indices
from serving.batcher import CallFn, CallPlan, ScoreBatcher, ScorerError
from serving.composition import SharedState
from serving.load_meter import LoadMeter
from serving.request import RequestOptions
from serving.routing import TIERS, AutoPlan, BatchItem, CostModel, RoutePolicy, TierCost, plan_batch, settle_auto

SCORER_CALLS = ("bls", "onnxruntime")  # RankerConfig.scorer_calls
# Parameters Triton itself reads from the ranker's config; not the ranker's.
TRITON_PARAMETERS = frozenset({"FORCE_CPU_ONLY_INPUT_TENSORS"})


@dataclass(frozen=True)
class RankerConfig:
    """The ranker's parameters (its config.pbtxt ``parameters``); the defaults are the served ones.

    load_window_ms       auto's load signal window (serving/load_meter.py); 0 = load-unaware
    scorer_calls         "bls": each scorer call is a BLS request to scorer_light / scorer_heavy;
                         "onnxruntime": the ranker runs those models' ONNX graphs itself
                         (serving/scorer_sessions.py), saving two process hops per call (CPU only)
    heavy_timeout_ms     how long a cascade / auto request without a budget waits for heavy
    metrics_interval_ms  custom metrics are sent at most this often; 0 = after every execute
    """

    policy: RoutePolicy = RoutePolicy()
    light: TierCost = TierCost(2.0, 0.002)  # cost-model priors (ms), replaced by timings
    heavy: TierCost = TierCost(3.0, 0.02)
    calls: CallPlan = CallPlan()  # how a tier's candidates are split into scorer calls
    default_top_k: int = 10
    tensor_library: str = "numpy"  # serving/arrays.py LIBRARIES
    heavy_timeout_ms: float = 2000.0
    load_window_ms: float = 1000.0
    metrics_interval_ms: float = 250.0
    scorer_calls: str = "bls"

    def __post_init__(self) -> None:
        if self.scorer_calls not in SCORER_CALLS:
            raise ValueError(f"scorer_calls must be one of {', '.join(SCORER_CALLS)}, got {self.scorer_calls!r}")
        if self.scorer_calls == "onnxruntime" and self.tensor_library != "numpy":
            raise ValueError("scorer_calls onnxruntime runs on host arrays: it needs tensor_library numpy")
        if self.default_top_k < 1:
            raise ValueError(f"default_top_k must be >= 1, got {self.default_top_k}")
        for name in ("heavy_timeout_ms", "load_window_ms", "metrics_interval_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def priors(self) -> dict[str, TierCost]:
        return {"light": self.light, "heavy": self.heavy}

    def parameters(self) -> dict[str, str]:
        """The config's ``parameters`` map for this configuration (string values, as Triton's)."""
        out = {f.name: str(getattr(self.policy, f.name)) for f in fields(RoutePolicy)}
        out.update({f.name: str(getattr(self.calls, f.name)) for f in fields(CallPlan)})
        for tier in TIERS:
            cost = self.priors[tier]
            out[f"{tier}_fixed_ms"], out[f"{tier}_per_candidate_ms"] = str(cost.fixed_ms), str(cost.per_candidate_ms)
        for f in fields(self):
            if f.name not in _NESTED:
                out[f.name] = str(getattr(self, f.name))
        return out

    @classmethod
    def from_parameters(cls, params: Mapping[str, str]) -> RankerConfig:
        """Parse a config's ``parameters`` (absent keys keep their defaults); ValueError names a bad key."""
        default = cls()
        known = default.parameters()
        unknown = sorted(set(params) - set(known) - TRITON_PARAMETERS)
        if unknown:
            raise ValueError(f"unknown ranker parameters {unknown}; known: {sorted(known)}")

        def value(key: str, like: object) -> object:
            raw = params.get(key, known[key])
            try:
                return type(like)(raw)
            except ValueError:
                raise ValueError(f"ranker parameter {key!r} must be {type(like).__name__}, got {raw!r}") from None

        policy = RoutePolicy(**{f.name: value(f.name, getattr(default.policy, f.name)) for f in fields(RoutePolicy)})
        calls = CallPlan(**{f.name: value(f.name, getattr(default.calls, f.name)) for f in fields(CallPlan)})
        costs = {t: TierCost(value(f"{t}_fixed_ms", 0.0), value(f"{t}_per_candidate_ms", 0.0)) for t in TIERS}
        rest = {f.name: value(f.name, getattr(default, f.name)) for f in fields(cls) if f.name not in _NESTED}
        return replace(default, policy=policy, calls=calls, **costs, **rest)


_NESTED = ("policy", "calls", *TIERS)  # RankerConfig fields whose own fields are the parameters


@dataclass
class RankerState:
    """What one ranker instance learns and tracks across requests.

    load  busy intervals of this instance; None = auto plans as if nothing queued
    """

    policy: RoutePolicy
    cost: CostModel
    calls: CallPlan = CallPlan()
    load: LoadMeter | None = None

    @classmethod
    def from_config(cls, cfg: RankerConfig) -> RankerState:
        load = LoadMeter(cfg.load_window_ms / 1e3) if cfg.load_window_ms > 0 else None
        return cls(cfg.policy, CostModel(cfg.priors), cfg.calls, load)

    def wait_ms(self) -> float:
        """How long a request starting now has likely queued (0 when load-unaware)."""
        return self.load.expected_wait_ms() if self.load is not None else 0.0


@dataclass(frozen=True)
class RequestTime:
    """One request's time: when the ranker took it, its budget, what it spent before, and how
    long its heavy stage may run (counted like the budget: from the send time when known)."""

    start: float  # time.perf_counter() when the ranker took the request
    budget_ms: float  # latency_budget_ms (or the default)
    heavy_ms: float  # a cascade / auto heavy stage must answer within this
    waited_ms: float | None = None  # under way before ``start`` (the client's stamp); None = unknown

    @classmethod
    def now(cls, budget_ms: float, heavy_ms: float | None = None, waited_ms: float | None = None) -> RequestTime:
        return cls(time.perf_counter(), budget_ms, budget_ms if heavy_ms is None else heavy_ms, waited_ms)

    @classmethod
    def of(cls, options: RequestOptions, heavy_timeout_ms: float, start: float) -> RequestTime:
        """A request's time from its parameters: the heavy stage gets the request's own budget when
        it sent one, else ``heavy_timeout_ms`` (a budget-less cascade must not turn light on a
        briefly busy server)."""
        heavy_ms = options.latency_budget_ms if options.budget_given else heavy_timeout_ms
        return cls(start, options.latency_budget_ms, heavy_ms, options.waited_ms(time.time() * 1e3))

    @property
    def heavy_deadline(self) -> float:
        """time.perf_counter() by which heavy must have answered: spent budget brings it forward."""
        return self.start + (self.heavy_ms - (self.waited_ms or 0.0)) * 1e-3

    def over_budget(self, end: float) -> bool:
        """Whether a request answered at ``end`` (perf_counter) missed its budget, time before start included."""
        return (end - self.start) * 1e3 + (self.waited_ms or 0.0) > self.budget_ms


@dataclass
class RankResult:
    top_idx: Array  # (K,) candidate positions, best first
    scores: Array  # (N,) final scores, consistent with top_idx's order
    route: str
    plan: AutoPlan | None = None
    candidates_scored: dict[str, int] = field(default_factory=dict)
    fallback: str | None = None  # "error" | "timeout": the heavy stage was abandoned for light
    fallback_detail: str = ""  # the scorer error or the deadline missed


@dataclass(frozen=True)
class Fallback:
    reason: str  # "error" | "timeout"
    detail: str


@dataclass(frozen=True)
class RankItem:
    """One request as the ranker ranks it."""

    shared: SharedState
    candidate_emb: Array  # (N, C, E)
    route: str  # asked: auto | light | heavy | cascade
    k: int
    timing: RequestTime


async def heavy_within(
    scorer: ScoreBatcher, shared: SharedState, candidate_emb: Array, timing: RequestTime
) -> Array | Fallback:
    """Heavy scores of ``candidate_emb`` [m, C, E], or why there are none: it failed, or did not
    answer by the request's heavy deadline."""
    remaining_s = timing.heavy_deadline - time.perf_counter()
    try:
        if remaining_s <= 0:
            raise TimeoutError
        return await asyncio.wait_for(scorer.score("heavy", shared, candidate_emb), remaining_s)
    except ScorerError as exc:
        return Fallback("error", str(exc))
    except TimeoutError:
        return Fallback("timeout", f"scorer_heavy: no answer within {timing.heavy_ms:g} ms")


def _result(scores: Array, k: int, route: str, scored: dict[str, int], plan: AutoPlan | None) -> RankResult:
    return RankResult(top_k_indices(scores, k), scores, route, plan, scored)


def _fell_back(result: RankResult, fallback: Fallback) -> RankResult:
    return replace(result, route="light", fallback=fallback.reason, fallback_detail=fallback.detail)


async def rank_light(scorer: ScoreBatcher, item: RankItem, plan: AutoPlan | None = None) -> RankResult:
    light = await scorer.score("light", item.shared, item.candidate_emb)
    return _result(light, item.k, "light", {"light": item.candidate_emb.shape[0]}, plan)


async def rank_heavy(scorer: ScoreBatcher, item: RankItem) -> RankResult:
    """Asked for heavy: its ScorerError is the answer (nothing to fall back to)."""
    heavy = await scorer.score("heavy", item.shared, item.candidate_emb)
    return _result(heavy, item.k, "heavy", {"heavy": item.candidate_emb.shape[0]}, None)


async def rank_cascade(
    scorer: ScoreBatcher, state: RankerState, item: RankItem, plan: AutoPlan | None = None
) -> RankResult:
    """Light on all N, heavy re-scores light's top M (an auto plan's M, else the policy's); a
    planned cascade stops at light when light is confident (settle_auto)."""
    n, k = item.candidate_emb.shape[0], item.k
    light = await scorer.score("light", item.shared, item.candidate_emb)
    # light_confidence is one O(N) pass on the host: N floats copied on the torch path
    if plan is not None and settle_auto(plan, arrays.to_numpy(light), k, state.policy) == "light":
        return _result(light, k, "light", {"light": n}, plan)
    m = plan.m if plan is not None else state.policy.cascade_size(n, k)
    top = top_k_indices(light, m)
    heavy = await heavy_within(scorer, item.shared, arrays.take(item.candidate_emb, top), item.timing)  # (M, C, E)
    if isinstance(heavy, Fallback):
        return _fell_back(_result(light, k, "light", {"light": n}, plan), heavy)
    return _result(cascade_merge(light, heavy, top), k, "cascade", {"light": n, "heavy": m}, plan)


async def rank_planned(scorer: ScoreBatcher, state: RankerState, item: RankItem, plan: AutoPlan) -> RankResult:
    """An auto request on its planned route; heavy's failure or lateness falls back to light."""
    if plan.route == "cascade":
        return await rank_cascade(scorer, state, item, plan)
    if plan.route == "heavy":
        heavy = await heavy_within(scorer, item.shared, item.candidate_emb, item.timing)
        if not isinstance(heavy, Fallback):
            return _result(heavy, item.k, "heavy", {"heavy": item.candidate_emb.shape[0]}, plan)
        return _fell_back(await rank_light(scorer, item, plan), heavy)
    return await rank_light(scorer, item, plan)


async def _rank_one(scorer: ScoreBatcher, state: RankerState, item: RankItem, plan: AutoPlan | None) -> RankResult:
    if item.route == "auto":
        return await rank_planned(scorer, state, item, plan)
    if item.route == "cascade":
        return await rank_cascade(scorer, state, item)
    if item.route == "heavy":
        return await rank_heavy(scorer, item)
    if item.route == "light":
        return await rank_light(scorer, item)
    raise ValueError(f"unknown route {item.route!r}")


def plan_items(state: RankerState, items: Sequence[RankItem]) -> list[AutoPlan | None]:
    """auto's routes for the batch: what each request already spent is its client's stamp when it
    sent one, else the instance's measured load (serving/load_meter.py)."""
    wait = state.wait_ms()
    batch = [
        BatchItem(
            it.route,
            it.candidate_emb.shape[0],
            it.k,
            it.timing.budget_ms,
            wait if it.timing.waited_ms is None else it.timing.waited_ms,
        )
        for it in items
    ]
    return plan_batch(state.cost, batch, state.policy)


async def rank_batch(call_fn: CallFn, state: RankerState, items: Sequence[RankItem]) -> list[RankResult | ScorerError]:
    """Rank one execute()'s requests together (one scorer call per tier per micro-batch); each
    entry is the request's result, or the ScorerError of its explicit heavy route."""
    scorer = ScoreBatcher(call_fn, state.cost, state.calls)
    plans = plan_items(state, items)
    outcomes = await asyncio.gather(
        *(_rank_one(scorer, state, it, plan) for it, plan in zip(items, plans)), return_exceptions=True
    )
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, ScorerError):
            raise outcome
    return list(outcomes)


async def rank(
    call_fn: CallFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,  # (N, C, E)
    route: str,
    k: int,
    timing: RequestTime,
) -> RankResult:
    """Score one request on ``route`` (auto resolves to light, heavy or cascade); its top k."""
    (outcome,) = await rank_batch(call_fn, state, [RankItem(shared, candidate_emb, route, k, timing)])
    if isinstance(outcome, ScorerError):
        raise outcome
    return outcome


def response_arrays(candidate_ids: Array, result: RankResult) -> dict[str, Array]:
    """The ranker's outputs for one request (contract.RANKER: batch dim 1); ``candidate_ids`` [1, N]."""
    return {
        "top_ids": arrays.take(candidate_ids[0], result.top_idx)[None],  # (1, K) int64
        "top_scores": arrays.float32(arrays.take(result.scores, result.top_idx))[None],  # (1, K)
        "scores": arrays.float32(result.scores)[None],  # (1, N)
        "route": np.array([[result.route.encode()]], dtype=np.object_),  # (1, 1) BYTES has no DLPack form
    }
