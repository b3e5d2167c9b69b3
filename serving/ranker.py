"""The ranker's request path, independent of Triton: one function per route.

``rank`` scores one request with an async ``ScoreFn`` (one scorer call: a BLS request in
serving/triton/ranker_model.py, ONNX Runtime in tests). The user side goes unchanged into
every micro-batch call; only the candidates are split. When heavy fails or runs late inside
a cascade or an auto plan, the light ranking is the answer (route "light", ``fallback``
says why); an explicit ``heavy`` has no fallback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields, replace

import numpy as np

from serving import arrays
from serving.arrays import Array, cascade_merge, top_k_indices
from serving.composition import SharedState, scorer_inputs
from serving.load_meter import LoadMeter
from serving.request import RequestOptions
from serving.routing import TIERS, AutoPlan, CostModel, RoutePolicy, TierCost, plan_auto, settle_auto

# score_fn(tier, inputs) -> scores [n]; tier is "light" or "heavy"; arrays of one library.
ScoreFn = Callable[[str, dict[str, Array]], Awaitable[Array]]

# Parameters Triton itself reads from the ranker's config; not the ranker's.
TRITON_PARAMETERS = frozenset({"FORCE_CPU_ONLY_INPUT_TENSORS"})


class ScorerError(RuntimeError):
    """A scorer call failed (not the client's fault); the message names the scorer."""


@dataclass(frozen=True)
class RankerConfig:
    """The ranker's parameters (its config.pbtxt ``parameters``); the defaults are the served ones.

    load_window_ms       auto's load signal window (serving/load_meter.py); 0 = load-unaware
    heavy_timeout_ms     how long a cascade / auto request without a budget waits for heavy
    metrics_interval_ms  custom metrics are sent at most this often; 0 = after every execute
    """

    policy: RoutePolicy = RoutePolicy()
    light: TierCost = TierCost(2.0, 0.002)  # cost-model priors (ms), replaced by timings
    heavy: TierCost = TierCost(3.0, 0.02)
    micro_batch: int = 512
    default_top_k: int = 10
    tensor_library: str = "numpy"  # serving/arrays.py LIBRARIES
    heavy_timeout_ms: float = 2000.0
    load_window_ms: float = 1000.0
    metrics_interval_ms: float = 250.0

    def __post_init__(self) -> None:
        if self.micro_batch < 1 or self.default_top_k < 1:
            raise ValueError(
                f"micro_batch and default_top_k must be >= 1, got {self.micro_batch}, {self.default_top_k}"
            )
        for name in ("heavy_timeout_ms", "load_window_ms", "metrics_interval_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def priors(self) -> dict[str, TierCost]:
        return {"light": self.light, "heavy": self.heavy}

    def parameters(self) -> dict[str, str]:
        """The config's ``parameters`` map for this configuration (string values, as Triton's)."""
        out = {f.name: str(getattr(self.policy, f.name)) for f in fields(RoutePolicy)}
        for tier in TIERS:
            cost = self.priors[tier]
            out[f"{tier}_fixed_ms"], out[f"{tier}_per_candidate_ms"] = str(cost.fixed_ms), str(cost.per_candidate_ms)
        for f in fields(self):
            if f.name not in ("policy", *TIERS):
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
        costs = {t: TierCost(value(f"{t}_fixed_ms", 0.0), value(f"{t}_per_candidate_ms", 0.0)) for t in TIERS}
        rest = {
            f.name: value(f.name, getattr(default, f.name)) for f in fields(cls) if f.name not in ("policy", *TIERS)
        }
        return replace(default, policy=policy, **costs, **rest)


@dataclass
class RankerState:
    """What one ranker instance learns and tracks across requests.

    load  busy intervals of this instance; None = auto plans as if nothing queued
    """

    policy: RoutePolicy
    cost: CostModel
    micro_batch: int = 512
    load: LoadMeter | None = None

    @classmethod
    def from_config(cls, cfg: RankerConfig) -> RankerState:
        load = LoadMeter(cfg.load_window_ms / 1e3) if cfg.load_window_ms > 0 else None
        return cls(cfg.policy, CostModel(cfg.priors), cfg.micro_batch, load)

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


def micro_batches(n: int, size: int) -> list[slice]:
    """Split 0..n into ceil(n / size) contiguous, balanced slices, in order.

    Balanced (lengths differ by at most one) so concurrent scorer calls finish
    together: n=1025, size=512 gives 342, 342, 341 instead of 512, 512, 1.
    n = 0 gives no slices.
    """
    if size < 1:
        raise ValueError(f"micro-batch size must be >= 1, got {size}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if n == 0:
        return []
    count = -(-n // size)
    base, extra = divmod(n, count)  # the first `extra` slices get one more
    out, start = [], 0
    for i in range(count):
        stop = start + base + (i < extra)
        out.append(slice(start, stop))
        start = stop
    return out


async def score_tier(
    score_fn: ScoreFn, state: RankerState, tier: str, shared: SharedState, candidate_emb: Array
) -> Array:
    """Scores [n] of ``tier`` over ``candidate_emb`` [n, C, E], micro-batches issued concurrently;
    the wall time feeds the cost model."""
    n = candidate_emb.shape[0]
    start = time.perf_counter()
    parts = await asyncio.gather(
        *(score_fn(tier, scorer_inputs(tier, shared, candidate_emb[s])) for s in micro_batches(n, state.micro_batch))
    )
    elapsed_ms = (time.perf_counter() - start) * 1e3
    scores = arrays.float32(arrays.concatenate(parts))  # (n,) on the first part's device
    if tuple(scores.shape) != (n,):
        raise ScorerError(f"{tier} scorer returned {scores.shape[0]} scores for {n} candidates")
    state.cost.observe(tier, n, elapsed_ms)
    return scores


async def heavy_within(
    score_fn: ScoreFn, state: RankerState, shared: SharedState, candidate_emb: Array, timing: RequestTime
) -> Array | Fallback:
    """Heavy scores of ``candidate_emb`` [m, C, E], or why there are none: it failed, or did not
    answer by the request's heavy deadline."""
    remaining_s = timing.heavy_deadline - time.perf_counter()
    try:
        if remaining_s <= 0:
            raise TimeoutError
        return await asyncio.wait_for(score_tier(score_fn, state, "heavy", shared, candidate_emb), remaining_s)
    except ScorerError as exc:
        return Fallback("error", str(exc))
    except TimeoutError:
        return Fallback("timeout", f"scorer_heavy: no answer within {timing.heavy_ms:g} ms")


def _result(scores: Array, k: int, route: str, scored: dict[str, int], plan: AutoPlan | None) -> RankResult:
    return RankResult(top_k_indices(scores, k), scores, route, plan, scored)


def _fell_back(result: RankResult, fallback: Fallback) -> RankResult:
    return replace(result, route="light", fallback=fallback.reason, fallback_detail=fallback.detail)


async def rank_light(
    score_fn: ScoreFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,
    k: int,
    plan: AutoPlan | None = None,
) -> RankResult:
    light = await score_tier(score_fn, state, "light", shared, candidate_emb)
    return _result(light, k, "light", {"light": candidate_emb.shape[0]}, plan)


async def rank_heavy(
    score_fn: ScoreFn, state: RankerState, shared: SharedState, candidate_emb: Array, k: int
) -> RankResult:
    """Asked for heavy: its ScorerError is the answer (nothing to fall back to)."""
    heavy = await score_tier(score_fn, state, "heavy", shared, candidate_emb)
    return _result(heavy, k, "heavy", {"heavy": candidate_emb.shape[0]}, None)


async def rank_cascade(
    score_fn: ScoreFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,
    k: int,
    timing: RequestTime,
    plan: AutoPlan | None = None,
) -> RankResult:
    """Light on all N, heavy re-scores light's top M (an auto plan's M, else the policy's); a
    planned cascade stops at light when light is confident (settle_auto)."""
    n = candidate_emb.shape[0]
    light = await score_tier(score_fn, state, "light", shared, candidate_emb)
    # light_confidence is one O(N) pass on the host: N floats copied on the torch path
    if plan is not None and settle_auto(plan, arrays.to_numpy(light), k, state.policy) == "light":
        return _result(light, k, "light", {"light": n}, plan)
    m = plan.m if plan is not None else state.policy.cascade_size(n, k)
    top = top_k_indices(light, m)
    heavy = await heavy_within(score_fn, state, shared, arrays.take(candidate_emb, top), timing)  # (M, C, E) in
    if isinstance(heavy, Fallback):
        return _fell_back(_result(light, k, "light", {"light": n}, plan), heavy)
    return _result(cascade_merge(light, heavy, top), k, "cascade", {"light": n, "heavy": m}, plan)


async def rank_auto(
    score_fn: ScoreFn, state: RankerState, shared: SharedState, candidate_emb: Array, k: int, timing: RequestTime
) -> RankResult:
    """The best route predicted to fit what is left of the budget (routing.plan_auto): the
    client's stamp says what was spent, else the instance's measured load."""
    n = candidate_emb.shape[0]
    wait = state.wait_ms() if timing.waited_ms is None else timing.waited_ms
    plan = plan_auto(state.cost, n, k, timing.budget_ms, wait, state.policy)
    if plan.route == "cascade":
        return await rank_cascade(score_fn, state, shared, candidate_emb, k, timing, plan)
    if plan.route == "heavy":
        heavy = await heavy_within(score_fn, state, shared, candidate_emb, timing)
        if not isinstance(heavy, Fallback):
            return _result(heavy, k, "heavy", {"heavy": n}, plan)
        return _fell_back(await rank_light(score_fn, state, shared, candidate_emb, k, plan), heavy)
    return await rank_light(score_fn, state, shared, candidate_emb, k, plan)


async def rank(
    score_fn: ScoreFn,
    state: RankerState,
    shared: SharedState,
    candidate_emb: Array,  # (N, C, E)
    route: str,
    k: int,
    timing: RequestTime,
) -> RankResult:
    """Score one request on ``route`` (auto resolves to light, heavy or cascade); its top k."""
    if route == "auto":
        return await rank_auto(score_fn, state, shared, candidate_emb, k, timing)
    if route == "cascade":
        return await rank_cascade(score_fn, state, shared, candidate_emb, k, timing)
    if route == "heavy":
        return await rank_heavy(score_fn, state, shared, candidate_emb, k)
    if route == "light":
        return await rank_light(score_fn, state, shared, candidate_emb, k)
    raise ValueError(f"unknown route {route!r}")


def response_arrays(candidate_ids: Array, result: RankResult) -> dict[str, Array]:
    """The ranker's outputs for one result (names and dtypes as contract.RANKER)."""
    return {
        "top_ids": arrays.take(candidate_ids, result.top_idx),  # (K,) int64
        "top_scores": arrays.float32(arrays.take(result.scores, result.top_idx)),  # (K,)
        "scores": arrays.float32(result.scores),  # (N,)
        "route": np.array([result.route.encode()], dtype=np.object_),  # BYTES has no DLPack form
    }
