"""Adaptive routing: which scorer tier fits a request's latency budget.

``plan_auto`` predicts each route's latency from N and a cost model learned online from the
ranker's own scorer timings (so routing follows the hardware: CPU ONNX Runtime or FP8
TensorRT) and picks the best route that fits what is left of the budget. ``settle_auto``
stops a planned cascade at light when light is already confident about its top K.
Symbols: N candidates, M re-scored by heavy in a cascade, K results.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from serving.contract import FIXED_ROUTES

TIERS: tuple[str, ...] = ("light", "heavy")


@dataclass(frozen=True)
class TierCost:
    """Latency model of one scorer tier: predicted_ms(n) = fixed_ms + per_candidate_ms * n."""

    fixed_ms: float
    per_candidate_ms: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.fixed_ms) and self.fixed_ms >= 0):
            raise ValueError(f"fixed_ms must be finite and >= 0, got {self.fixed_ms}")
        if not (math.isfinite(self.per_candidate_ms) and self.per_candidate_ms >= 0):
            raise ValueError(f"per_candidate_ms must be finite and >= 0, got {self.per_candidate_ms}")

    def predict(self, n: int) -> float:
        return self.fixed_ms + self.per_candidate_ms * n


class _Fit:
    """Exponentially forgotten least squares of y = a + b * n (one tier).

    Keeps the decayed sufficient statistics: with weight w_i = forgetting**age_i,
    s0 = sum w, s1 = sum w n, s2 = sum w n^2, t0 = sum w y, t1 = sum w n y.
    Each observation is O(1) and old timings fade with a memory of about
    1 / (1 - forgetting) observations, so the fit follows load or clock changes.
    """

    def __init__(self, prior: TierCost) -> None:
        self.prior = prior
        self.count = 0
        self.s0 = self.s1 = self.s2 = self.t0 = self.t1 = 0.0

    def add(self, n: float, y: float, forgetting: float) -> None:
        self.s0 = forgetting * self.s0 + 1.0
        self.s1 = forgetting * self.s1 + n
        self.s2 = forgetting * self.s2 + n * n
        self.t0 = forgetting * self.t0 + y
        self.t1 = forgetting * self.t1 + n * y
        self.count += 1

    def solve(self, min_observations: int) -> TierCost:
        """The current estimate; the prior until ``min_observations`` timings arrived.

        - Too few observations: the prior.
        - All observed n (nearly) equal: fixed and per-candidate cost cannot be told
          apart, so keep the prior's per-candidate cost and fit the fixed cost.
        - Otherwise the weighted least-squares line, constrained to non-negative
          costs: a negative slope becomes b = 0 (a = weighted mean), a negative
          intercept becomes a = 0 (b fitted through the origin).
        """
        if self.count < min_observations:
            return self.prior
        det = self.s0 * self.s2 - self.s1 * self.s1  # s0 * weighted variance of n
        if det <= 1e-9 * self.s0 * self.s2:
            b = self.prior.per_candidate_ms
            return TierCost(max(0.0, (self.t0 - b * self.s1) / self.s0), b)
        b = (self.s0 * self.t1 - self.s1 * self.t0) / det
        a = (self.t0 - b * self.s1) / self.s0
        if b < 0:
            return TierCost(max(0.0, self.t0 / self.s0), 0.0)
        if a < 0:
            return TierCost(0.0, max(0.0, self.t1 / self.s2))
        return TierCost(a, b)


class CostModel:
    """Per-tier latency model learned online from the BLS's own scorer timings.

    ``observe(tier, n, elapsed_ms)`` records the wall time of one tier stage on n
    candidates (all its micro-batches, issued concurrently); ``predicted_ms`` is
    fixed + per_candidate * n of the current fit. ``priors`` are used until a tier
    has ``min_observations`` timings. Timings are those of the scorer calls as the
    ranker sees them (the scorers' own queueing included), so the fit follows the
    load the scorers are under; the queueing before the ranker is ``plan_auto``'s
    ``wait_ms``.

    Concurrency: every method is synchronous (no awaits), so under asyncio each
    call is atomic; a lock also makes it safe from the backend's threads.
    """

    def __init__(self, priors: Mapping[str, TierCost], forgetting: float = 0.95, min_observations: int = 8) -> None:
        if set(priors) != set(TIERS):
            raise ValueError(f"priors must name exactly the tiers {TIERS}, got {sorted(priors)}")
        if not 0 < forgetting <= 1:
            raise ValueError(f"forgetting must lie in (0, 1], got {forgetting}")
        if min_observations < 2:
            raise ValueError(f"min_observations must be >= 2 (two unknowns), got {min_observations}")
        self.forgetting = forgetting
        self.min_observations = min_observations
        self._fits = {tier: _Fit(priors[tier]) for tier in TIERS}
        self._lock = threading.Lock()

    def _fit(self, tier: str) -> _Fit:
        if tier not in self._fits:
            raise ValueError(f"unknown tier {tier!r}; tiers are {TIERS}")
        return self._fits[tier]

    def observe(self, tier: str, n: int, elapsed_ms: float) -> None:
        """Record that ``tier`` scored ``n`` candidates in ``elapsed_ms``."""
        fit = self._fit(tier)
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not (math.isfinite(elapsed_ms) and elapsed_ms >= 0):
            raise ValueError(f"elapsed_ms must be finite and >= 0, got {elapsed_ms}")
        with self._lock:
            fit.add(float(n), elapsed_ms, self.forgetting)

    def cost(self, tier: str) -> TierCost:
        """The current (fixed_ms, per_candidate_ms) estimate of ``tier``."""
        fit = self._fit(tier)
        with self._lock:
            return fit.solve(self.min_observations)

    def predicted_ms(self, tier: str, n: int) -> float:
        """Latency of scoring ``n`` candidates on ``tier``."""
        return self.cost(tier).predict(n)


@dataclass(frozen=True)
class RoutePolicy:
    """How "auto" trades quality for latency.

    cascade_m             heavy re-scores the light top max(cascade_m, k) in a cascade
    confidence_threshold  light_confidence at or above which a cascade stops at light
    default_budget_ms     budget of requests without ``latency_budget_ms``
    safety_factor         a route fits when predicted_ms * safety_factor <= budget,
                          a margin for the cost model's error and the BLS overhead
    """

    cascade_m: int = 128
    confidence_threshold: float = 0.9
    default_budget_ms: float = 100.0
    safety_factor: float = 1.2

    def __post_init__(self) -> None:
        if self.cascade_m < 1:
            raise ValueError(f"cascade_m must be >= 1, got {self.cascade_m}")
        if not 0 <= self.confidence_threshold <= 1:
            raise ValueError(f"confidence_threshold must lie in [0, 1], got {self.confidence_threshold}")
        if not (math.isfinite(self.default_budget_ms) and self.default_budget_ms > 0):
            raise ValueError(f"default_budget_ms must be finite and > 0, got {self.default_budget_ms}")
        if not (math.isfinite(self.safety_factor) and self.safety_factor >= 1):
            raise ValueError(f"safety_factor must be finite and >= 1, got {self.safety_factor}")

    def cascade_size(self, n: int, k: int) -> int:
        """M: at least k, so every returned result carries a heavy score; at most n."""
        return min(n, max(self.cascade_m, k))


def predict_route_ms(cost: CostModel, route: str, n: int, m: int) -> float:
    """Predicted scoring latency of ``route`` on n candidates (cascade: heavy on m of them)."""
    if route == "light":
        ms = cost.predicted_ms("light", n)
    elif route == "heavy":
        ms = cost.predicted_ms("heavy", n)
    elif route == "cascade":
        ms = cost.predicted_ms("light", n) + cost.predicted_ms("heavy", min(m, n))
    else:
        raise ValueError(f"cannot predict route {route!r}; routes are {FIXED_ROUTES}")
    return ms


@dataclass(frozen=True)
class AutoPlan:
    """The "auto" decision for one request, with the predictions it was based on.

    route         "heavy" | "cascade" | "light" (settle_auto may turn cascade into light)
    m             candidates the heavy tier re-scores if the route is cascade
    budget_ms     the request's latency budget
    wait_ms       how long the request has likely queued already (serving/load_meter.py)
    predicted_ms  predicted scoring latency of each route (for metrics/debug)
    """

    route: str
    m: int
    budget_ms: float
    wait_ms: float
    predicted_ms: dict[str, float] = field(default_factory=dict)


def plan_auto(cost: CostModel, n: int, k: int, budget_ms: float, wait_ms: float, policy: RoutePolicy) -> AutoPlan:
    """Choose the best route predicted to fit what is left of ``budget_ms``, before any scoring.

    heavy if heavy(N) fits; else cascade if light(N) + heavy(M) fits; else light,
    which is the fallback even when it does not fit either (some answer beats none).
    "Fits" means wait_ms + predicted_ms * safety_factor <= budget_ms: ``wait_ms`` is the
    time the request has likely spent queued before the ranker (0 when load-unaware).
    """
    if n < 1 or k < 1:
        raise ValueError(f"n and k must be >= 1, got n={n}, k={k}")
    if not (math.isfinite(wait_ms) and wait_ms >= 0):
        raise ValueError(f"wait_ms must be finite and >= 0, got {wait_ms}")
    m = policy.cascade_size(n, k)
    predicted = {r: predict_route_ms(cost, r, n, m) for r in FIXED_ROUTES}
    route = "light"
    for candidate in ("heavy", "cascade"):
        if wait_ms + predicted[candidate] * policy.safety_factor <= budget_ms:
            route = candidate
            break
    return AutoPlan(route, m, budget_ms, wait_ms, predicted)


@dataclass(frozen=True)
class BatchItem:
    """One request of a batch as routing sees it: the route asked for ("auto" or a fixed one)."""

    route: str
    n: int
    k: int
    budget_ms: float
    wait_ms: float  # time already spent (the client's stamp) or the likely queueing before the ranker


def _batch_latency(cost: CostModel, routes: list[str], items: Sequence[BatchItem], ms: list[int]) -> dict[str, float]:
    """Predicted latency per route when the batch's requests take ``routes``: a tier's calls are
    shared, so each stage costs its tier on the batch's total candidates (stage 1: light for light
    and cascade requests, beside heavy for heavy ones; stage 2: heavy on the cascades' top M)."""
    light_n = sum(it.n for it, r in zip(items, routes) if r in ("light", "cascade"))
    heavy_n = sum(it.n for it, r in zip(items, routes) if r == "heavy")
    rescored = sum(m for m, r in zip(ms, routes) if r == "cascade")
    light = cost.predicted_ms("light", light_n) if light_n else 0.0
    return {
        "light": light,
        "heavy": cost.predicted_ms("heavy", heavy_n) if heavy_n else 0.0,
        "cascade": light + (cost.predicted_ms("heavy", rescored) if rescored else 0.0),
    }


def plan_batch(cost: CostModel, items: Sequence[BatchItem], policy: RoutePolicy) -> list[AutoPlan | None]:
    """Routes for the "auto" requests of one batch (None for the others), chosen together.

    Every auto request starts on light; then, the one with the least budget left first, each is
    moved to heavy, else to cascade, if it fits there and every auto request that fitted before
    still fits (a heavier route for one makes the shared calls slower for all). Tightest first: a
    request with budget to spare can still take a cascade (light + heavy on its top M) after the
    tight ones took heavy. For a batch of one this is ``plan_auto``.
    "Fits": wait_ms + predicted * safety_factor <= budget_ms.
    """
    for it in items:
        if it.n < 1 or it.k < 1:
            raise ValueError(f"n and k must be >= 1, got n={it.n}, k={it.k}")
        if not (math.isfinite(it.wait_ms) and it.wait_ms >= 0):
            raise ValueError(f"wait_ms must be finite and >= 0, got {it.wait_ms}")
    ms = [policy.cascade_size(it.n, it.k) for it in items]
    routes = ["light" if it.route == "auto" else it.route for it in items]
    autos = [i for i, it in enumerate(items) if it.route == "auto"]

    def fitting(latency: dict[str, float]) -> set[int]:
        return {i for i in autos if items[i].wait_ms + latency[routes[i]] * policy.safety_factor <= items[i].budget_ms}

    for i in sorted(autos, key=lambda j: items[j].budget_ms - items[j].wait_ms):
        before = fitting(_batch_latency(cost, routes, items, ms))
        for candidate in ("heavy", "cascade"):
            routes[i] = candidate
            after = fitting(_batch_latency(cost, routes, items, ms))
            if i in after and (before - {i}) <= after:
                break
            routes[i] = "light"
    latency = _batch_latency(cost, routes, items, ms)
    return [
        AutoPlan(routes[i], ms[i], it.budget_ms, it.wait_ms, dict(latency)) if it.route == "auto" else None
        for i, it in enumerate(items)
    ]


def settle_auto(plan: AutoPlan, light_scores: np.ndarray, k: int, policy: RoutePolicy) -> str:
    """The route finally taken once light scores [N] exist on a cascade plan.

    If light is confident about its top-k set (light_confidence >= threshold) the
    heavy re-score would change little: stop at "light" and save the heavy call.
    Other plans are returned unchanged.
    """
    if plan.route != "cascade":
        return plan.route
    return "light" if light_confidence(light_scores, k) >= policy.confidence_threshold else "cascade"


def light_confidence(light: np.ndarray, k: int) -> float:
    """Confidence in [0, 1] that light's top-k set [N] -> k is the right set.

    Formula, with s the scores sorted descending (s[0] the best):
        gap     = s[k-1] - s[k]                  (the margin at the top-k boundary)
        spacing = (s[0] - s[N-1]) / (N - 1)      (the mean gap between neighbours)
        conf    = gap / (gap + spacing)
    A boundary gap equal to a typical gap gives 0.5, nine typical gaps 0.9; a clear
    break between k winners and the rest approaches 1; ties at the boundary (or all
    scores equal) give 0. k >= N gives 1.0: every candidate is returned. Non-finite
    scores give 0 (nothing to trust). O(N) via np.partition.
    """
    if light.ndim != 1:
        raise ValueError(f"light must be 1-D, got shape {list(light.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = light.shape[0]
    if k >= n:
        return 1.0
    s = light.astype(np.float64)
    if not np.all(np.isfinite(s)):
        return 0.0
    neg = np.partition(-s, [k - 1, k])
    gap = float(neg[k] - neg[k - 1])  # s[k-1] - s[k] >= 0
    spacing = float(s.max() - s.min()) / (n - 1)
    if gap <= 0.0:
        return 0.0
    return gap / (gap + spacing)
