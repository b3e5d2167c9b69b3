"""Unit tests of serving/routing.py: the learned cost model and the auto route."""

from __future__ import annotations

import numpy as np
import pytest

from serving.routing import (
    AutoPlan,
    BatchItem,
    CostModel,
    RoutePolicy,
    TierCost,
    plan_auto,
    plan_batch,
    predict_route_ms,
    settle_auto,
)

# light(n) = 1 + 0.01 n, heavy(n) = 5 + 0.1 n. At n = 1000, m = 128:
#   light 11 ms, heavy 105 ms, cascade 11 + 17.8 = 28.8 ms.
PRIORS = {"light": TierCost(1.0, 0.01), "heavy": TierCost(5.0, 0.1)}
N, K = 1000, 10
POLICY = RoutePolicy(cascade_m=128, confidence_threshold=0.9, default_budget_ms=100.0, safety_factor=1.0)


def _cost(**kwargs) -> CostModel:
    return CostModel(PRIORS, **kwargs)


# --- CostModel ----------------------------------------------------------------------------------


def test_priors_used_until_enough_observations():
    cost = _cost(min_observations=4)
    for i, n in enumerate([10, 100, 1000]):
        cost.observe("heavy", n, 50.0 + n)
        assert cost.cost("heavy") == PRIORS["heavy"], f"after {i + 1} observations"
    cost.observe("heavy", 500, 550.0)
    assert cost.cost("heavy").per_candidate_ms == pytest.approx(1.0)
    assert cost.cost("light") == PRIORS["light"]  # tiers are independent


@pytest.mark.parametrize(
    "fixed, per_candidate, noise",
    [(2.0, 0.05, 0.0), (0.0, 0.3, 0.0), (7.5, 0.0, 0.0), (3.0, 0.02, 0.2)],
    ids=["exact", "no-fixed-cost", "no-per-candidate-cost", "noisy"],
)
def test_cost_model_recovers_known_costs(fixed, per_candidate, noise):
    rng = np.random.default_rng(1)
    cost = _cost(forgetting=0.98)
    for n in rng.integers(16, 4097, 400):
        elapsed = fixed + per_candidate * n + noise * rng.standard_normal()  # noise: jitter sd in ms
        cost.observe("light", int(n), max(0.0, float(elapsed)))
    got = cost.cost("light")
    if noise == 0:
        assert got.fixed_ms == pytest.approx(fixed, abs=1e-9)
        assert got.per_candidate_ms == pytest.approx(per_candidate, abs=1e-12)
    else:  # about 50 effective observations of 0.2 ms jitter
        assert got.fixed_ms == pytest.approx(fixed, abs=0.2)
        assert got.per_candidate_ms == pytest.approx(per_candidate, rel=0.02)
    assert cost.predicted_ms("light", 1000) == pytest.approx(fixed + per_candidate * 1000, rel=0.01)


def test_cost_model_forgets_old_timings():
    cost = _cost(forgetting=0.9)
    sizes = [64, 256, 1024, 4096]
    for i in range(40):
        n = sizes[i % 4]
        cost.observe("heavy", n, 5.0 + 0.1 * n)
    for i in range(200):  # the machine got twice as slow
        n = sizes[i % 4]
        cost.observe("heavy", n, 10.0 + 0.2 * n)
    got = cost.cost("heavy")
    assert got.fixed_ms == pytest.approx(10.0, rel=1e-3)
    assert got.per_candidate_ms == pytest.approx(0.2, rel=1e-3)


@pytest.mark.parametrize(
    "observations, expected",
    [
        # one size only: the prior's per-candidate cost, fixed cost fitted to the level
        ([(100, 30.0)] * 8, TierCost(20.0, 0.1)),
        # times fall with n: slope clipped to 0, fixed = mean time
        ([(10, 40.0), (1000, 20.0)] * 4, TierCost(30.0, 0.0)),
        # negative intercept: fixed clipped to 0, slope fitted through the origin
        ([(100, 5.0), (200, 15.0)] * 4, TierCost(0.0, (100 * 5 + 200 * 15) / (100**2 + 200**2))),
    ],
    ids=["single-size", "negative-slope", "negative-intercept"],
)
def test_cost_model_constrained_fits(observations, expected):
    cost = _cost(forgetting=1.0)
    for n, ms in observations:
        cost.observe("heavy", n, ms)
    got = cost.cost("heavy")
    assert got.fixed_ms == pytest.approx(expected.fixed_ms, abs=1e-9)
    assert got.per_candidate_ms == pytest.approx(expected.per_candidate_ms, abs=1e-12)


def test_learned_once_min_observations_arrived():
    cost = _cost(min_observations=2)
    cost.observe("light", 10, 1.2)
    cost.observe("light", 20, 1.4)
    light = cost.cost("light")
    assert (light.fixed_ms, light.per_candidate_ms) == (pytest.approx(1.0), pytest.approx(0.02))
    assert cost.cost("heavy") == PRIORS["heavy"]  # no observations: the prior


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda c: c.observe("medium", 10, 1.0), "unknown tier 'medium'"),
        (lambda c: c.predicted_ms("medium", 10), "unknown tier 'medium'"),
        (lambda c: c.observe("light", 0, 1.0), "n must be >= 1"),
        (lambda c: c.observe("light", 10, float("nan")), "elapsed_ms must be finite"),
        (lambda c: c.observe("light", 10, -1.0), "elapsed_ms must be finite and >= 0"),
    ],
    ids=["observe-tier", "predict-tier", "n-zero", "elapsed-nan", "elapsed-negative"],
)
def test_cost_model_rejects(call, match):
    with pytest.raises(ValueError, match=match):
        call(_cost())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"priors": {"light": TierCost(1, 0)}}, "priors must name exactly"),
        ({"forgetting": 0.0}, "forgetting"),
        ({"forgetting": 1.5}, "forgetting"),
        ({"min_observations": 1}, "min_observations"),
    ],
    ids=["missing-tier", "forgetting-zero", "forgetting-above-one", "min-observations"],
)
def test_cost_model_construction_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CostModel(**{"priors": PRIORS, **kwargs})


@pytest.mark.parametrize(
    "fixed, per_candidate", [(-1.0, 0.0), (0.0, -0.1), (float("inf"), 0.0)], ids=["neg-fixed", "neg-slope", "inf"]
)
def test_tier_cost_rejects(fixed, per_candidate):
    with pytest.raises(ValueError, match="must be finite and >= 0"):
        TierCost(fixed, per_candidate)


# --- RoutePolicy / predict_route_ms -------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cascade_m": 0}, "cascade_m"),
        ({"confidence_threshold": 1.5}, "confidence_threshold"),
        ({"default_budget_ms": 0.0}, "default_budget_ms"),
        ({"safety_factor": 0.5}, "safety_factor"),
    ],
    ids=["cascade-m", "threshold", "budget", "safety"],
)
def test_route_policy_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RoutePolicy(**kwargs)


@pytest.mark.parametrize(
    "route, n, m, expected",
    [
        ("light", N, 128, 11.0),
        ("heavy", N, 128, 105.0),
        ("cascade", N, 128, 28.8),
        ("cascade", 64, 128, 1.64 + 11.4),  # m clipped to n
    ],
    ids=["light", "heavy", "cascade", "cascade-m-above-n"],
)
def test_predict_route_ms(route, n, m, expected):
    assert predict_route_ms(_cost(), route, n, m) == pytest.approx(expected)


def test_predict_route_ms_rejects_auto():
    with pytest.raises(ValueError, match="cannot predict route 'auto'"):
        predict_route_ms(_cost(), "auto", N, 128)


# --- plan_auto / settle_auto --------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget_ms, expected",
    [(500.0, "heavy"), (105.0, "heavy"), (104.0, "cascade"), (28.8, "cascade"), (28.0, "light"), (1.0, "light")],
    ids=["ample", "heavy-exact", "just-below-heavy", "cascade-exact", "just-below-cascade", "nothing-fits"],
)
def test_plan_auto_as_budget_shrinks(budget_ms, expected):
    plan = plan_auto(_cost(), N, K, budget_ms, wait_ms=0.0, policy=POLICY)
    assert plan.route == expected
    assert plan.m == 128 and plan.budget_ms == budget_ms and plan.wait_ms == 0.0
    assert plan.predicted_ms == pytest.approx({"light": 11.0, "heavy": 105.0, "cascade": 28.8})


@pytest.mark.parametrize(
    "wait_ms, expected",
    [(0.0, "heavy"), (25.0, "heavy"), (25.1, "cascade"), (101.2, "cascade"), (101.3, "light"), (1e4, "light")],
    ids=["idle", "heavy-limit", "queueing", "cascade-limit", "overloaded", "swamped"],
)
def test_plan_auto_as_load_grows(wait_ms, expected):
    # budget 130 ms: heavy fits while wait + 105 <= 130 (wait <= 25), cascade while wait + 28.8 <= 130.
    plan = plan_auto(_cost(), N, K, 130.0, wait_ms=wait_ms, policy=POLICY)
    assert plan.route == expected
    assert plan.wait_ms == wait_ms


@pytest.mark.parametrize("wait_ms", [-1.0, float("nan"), float("inf")])
def test_plan_auto_rejects_bad_wait(wait_ms):
    with pytest.raises(ValueError, match="wait_ms"):
        plan_auto(_cost(), N, K, 130.0, wait_ms=wait_ms, policy=POLICY)


def test_plan_auto_safety_factor_shrinks_what_fits():
    policy = RoutePolicy(cascade_m=128, safety_factor=1.5)
    assert plan_auto(_cost(), N, K, 150.0, wait_ms=0.0, policy=policy).route == "cascade"  # 105 * 1.5 > 150
    assert plan_auto(_cost(), N, K, 158.0, wait_ms=0.0, policy=policy).route == "heavy"


@pytest.mark.parametrize(
    "n, k, expected_m", [(1000, 10, 128), (1000, 300, 300), (50, 10, 50)], ids=["cascade-m", "k-above-m", "n-below-m"]
)
def test_plan_auto_cascade_size(n, k, expected_m):
    assert plan_auto(_cost(), n, k, 100.0, wait_ms=0.0, policy=POLICY).m == expected_m


def test_plan_auto_follows_the_learned_costs():
    cost = _cost()
    assert plan_auto(cost, N, K, 120.0, 1, POLICY).route == "heavy"
    for n in [100, 500, 1000, 2000] * 3:  # heavy turns out 3x slower than its prior
        cost.observe("heavy", n, 15.0 + 0.3 * n)
    assert plan_auto(cost, N, K, 120.0, 1, POLICY).route == "cascade"


CONFIDENT = np.array([0.99] * K + list(np.linspace(0.3, 0.0, N - K)))  # clear break after the top K
UNSURE = np.linspace(1.0, 0.0, N)  # evenly spaced: boundary gap = typical gap -> confidence 0.5 (up to rounding)


@pytest.mark.parametrize(
    "route, scores, expected",
    [
        ("cascade", CONFIDENT, "light"),
        ("cascade", UNSURE, "cascade"),
        ("heavy", UNSURE, "heavy"),
        ("light", UNSURE, "light"),
    ],
    ids=["confident-stops-at-light", "unsure-keeps-cascade", "heavy-unchanged", "light-unchanged"],
)
def test_settle_auto(route, scores, expected):
    plan = AutoPlan(route, 128, 50.0, 1.0, {})
    assert settle_auto(plan, scores, K, POLICY) == expected


def test_settle_auto_threshold():
    plan = AutoPlan("cascade", 128, 50.0, 1.0, {})
    assert settle_auto(plan, UNSURE, K, RoutePolicy(confidence_threshold=0.49)) == "light"
    assert settle_auto(plan, UNSURE, K, RoutePolicy(confidence_threshold=0.51)) == "cascade"


# --- plan_batch: a batch's auto routes, planned together -------------------------------------------


def _items(*specs: tuple[str, int, float, float]) -> list[BatchItem]:
    return [BatchItem(route, n, K, budget, wait) for route, n, budget, wait in specs]


@pytest.mark.parametrize("budget_ms, wait_ms", [(1e6, 0.0), (100.0, 0.0), (25.0, 0.0), (5.0, 0.0), (100.0, 95.0)])
def test_plan_batch_of_one_is_plan_auto(budget_ms: float, wait_ms: float):
    cost = _cost()
    (plan,) = plan_batch(cost, _items(("auto", N, budget_ms, wait_ms)), POLICY)
    alone = plan_auto(cost, N, K, budget_ms, wait_ms, POLICY)
    assert (plan.route, plan.m, plan.budget_ms, plan.wait_ms) == (alone.route, alone.m, alone.budget_ms, alone.wait_ms)


def test_plan_batch_shares_the_heavy_call():
    """light(n) = 1 + 0.01 n, heavy(n) = 5 + 0.1 n. Two requests of 100 with 20 ms each: heavy for
    both means heavy(200) = 25 ms; heavy(100) = 15 for one, and the other's cascade is
    light(100) + heavy(100) = 17 ms."""
    plans = plan_batch(_cost(), _items(("auto", 100, 20.0, 0.0), ("auto", 100, 20.0, 0.0)), POLICY)
    assert sorted(p.route for p in plans) == ["cascade", "heavy"]
    assert all(p.predicted_ms[p.route] <= 20.0 for p in plans)


def test_plan_batch_tight_requests_take_heavy_first():
    """16 ms and 100 ms budgets: the tight one fits only heavy(100) = 15 ms, the loose one then
    fits a cascade (17 ms). Giving heavy to the loose one first would leave the tight one light."""
    plans = plan_batch(_cost(), _items(("auto", 100, 16.0, 0.0), ("auto", 100, 100.0, 0.0)), POLICY)
    assert [p.route for p in plans] == ["heavy", "cascade"]


def test_plan_batch_counts_fixed_routes():
    plans = plan_batch(_cost(), _items(("heavy", 100, 1e6, 0.0), ("auto", 100, 20.0, 0.0)), POLICY)
    assert plans[0] is None  # not auto: its route is its own
    assert plans[1].route == "cascade"  # heavy would share a call of 200: 25 ms


def test_plan_batch_never_pushes_a_fitting_request_out():
    """Ten requests with room for about one heavy: whatever the others take, every request that
    fits on light alone still fits at the end."""
    items = _items(*[("auto", 100, 16.0 + i, 0.0) for i in range(10)])
    plans = plan_batch(_cost(), items, POLICY)
    latency = plans[0].predicted_ms
    for plan, item in zip(plans, items):
        assert item.wait_ms + latency[plan.route] <= item.budget_ms
    assert any(p.route != "light" for p in plans)


def test_plan_batch_rejects_bad_items():
    with pytest.raises(ValueError, match="wait_ms must be finite"):
        plan_batch(_cost(), _items(("auto", 10, 5.0, float("nan"))), POLICY)
    with pytest.raises(ValueError, match="n and k must be >= 1"):
        plan_batch(_cost(), _items(("auto", 0, 5.0, 0.0)), POLICY)
