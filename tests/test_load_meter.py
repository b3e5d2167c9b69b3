"""LoadMeter: the ranker instance's busy fraction and the queueing it implies (serving/load_meter.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.composition import SharedState
from serving.load_meter import RHO_CAP, LoadMeter
from serving.ranker import RankerState, RequestTime, rank
from serving.routing import CostModel, RoutePolicy, TierCost


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_idle_instance_predicts_no_wait() -> None:
    meter = LoadMeter(1.0, Clock())
    assert meter.utilization() == 0.0
    assert meter.expected_wait_ms() == 0.0


def test_half_busy_waits_one_service_time() -> None:
    clock = Clock()
    meter = LoadMeter(1.0, clock, ewma=1.0)
    for i in range(10):  # 10 requests of 50 ms, one every 100 ms: rho 0.5
        start = 99.0 + 0.1 * i
        clock.now = start + 0.05
        meter.record(start, clock.now)
    clock.now = 100.0
    assert meter.utilization() == pytest.approx(0.5)
    assert meter.service_ms == pytest.approx(50.0)
    assert meter.expected_wait_ms() == pytest.approx(50.0)  # rho / (1 - rho) * S


def test_saturated_instance_is_capped_not_infinite() -> None:
    clock = Clock()
    meter = LoadMeter(1.0, clock, ewma=1.0)
    for i in range(20):  # back to back: always busy
        clock.now = 99.0 + 0.05 * (i + 1)
        meter.record(clock.now - 0.05, clock.now)
    assert meter.utilization() == pytest.approx(1.0)
    assert meter.expected_wait_ms() == pytest.approx(RHO_CAP / (1 - RHO_CAP) * 50.0)


def test_old_intervals_leave_the_window() -> None:
    clock = Clock()
    meter = LoadMeter(1.0, clock)
    meter.record(99.5, 100.0)
    assert meter.utilization() == pytest.approx(0.5)
    clock.now = 100.7  # the window is [99.7, 100.7]: 0.3 s of the interval left
    assert meter.utilization() == pytest.approx(0.3)
    clock.now = 101.5
    assert meter.utilization() == 0.0
    assert meter.expected_wait_ms() == 0.0


def test_service_time_is_a_moving_average() -> None:
    clock = Clock()
    meter = LoadMeter(1.0, clock, ewma=0.5)
    meter.record(99.0, 99.01)  # 10 ms
    meter.record(99.1, 99.13)  # 30 ms
    assert meter.service_ms == pytest.approx(20.0)


@pytest.mark.parametrize("window", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_window_is_refused(window: float) -> None:
    with pytest.raises(ValueError, match="load window"):
        LoadMeter(window)


def test_interval_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="ends before it starts"):
        LoadMeter(1.0, Clock()).record(2.0, 1.0)


# --- the wait in the request path (serving/ranker.rank) ---------------------------------

N, D, C, E = 300, 4, 4, 3


def _state(load: LoadMeter | None = None) -> RankerState:
    priors = {"light": TierCost(1.0, 0.001), "heavy": TierCost(2.0, 0.01)}  # heavy(300) = 5 ms
    return RankerState(RoutePolicy(cascade_m=8, confidence_threshold=1.0), CostModel(priors), load=load)


async def _scores(tier: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
    if tier == "light":  # candidate_emb (n, C, E)
        return np.linspace(0.0, 1.0, inputs["candidate_emb"].shape[0], dtype=np.float32)
    return np.ones(inputs["candidate_emb"].shape[:2], np.float32)  # heavy: blocks (B, n, C, E) -> (B, n)


def _rank(state: RankerState, route: str, budget_ms: float, waited_ms: float | None) -> object:
    shared = SharedState(np.ones((1, D), np.float32), np.ones((1, 6, D), np.float32))
    emb = np.ones((N, C, E), np.float32)
    return asyncio.run(rank(_scores, state, shared, emb, route, 5, RequestTime.now(budget_ms, waited_ms=waited_ms)))


def test_auto_plans_with_the_time_the_client_says_has_passed() -> None:
    assert _rank(_state(), "auto", 100.0, waited_ms=None).route == "heavy"  # 5 ms fits 100
    # heavy(300) = 5 ms, cascade = light(300) + heavy(8) = 3.38 ms; both times safety factor 1.2
    # 5 ms left: 6 > 5 >= 4.06. The plan, not the route taken: on a loaded machine the cascade's
    # heavy stage may itself miss those 5 ms of wall time and fall back to light.
    assert _rank(_state(), "auto", 100.0, waited_ms=95.0).plan.route == "cascade"
    assert _rank(_state(), "auto", 100.0, waited_ms=99.5).route == "light"  # nothing fits


def test_auto_without_a_stamp_plans_with_the_measured_load() -> None:
    clock = Clock()
    meter = LoadMeter(1.0, clock, ewma=1.0)
    for i in range(20):  # saturated: 50 ms requests back to back -> about 2.45 s of likely wait
        clock.now = 99.0 + 0.05 * (i + 1)
        meter.record(clock.now - 0.05, clock.now)
    assert _rank(_state(meter), "auto", 100.0, waited_ms=None).route == "light"
    assert _rank(_state(None), "auto", 100.0, waited_ms=None).route == "heavy"  # load-unaware


def test_spent_budget_brings_the_heavy_deadline_forward() -> None:
    result = _rank(_state(), "cascade", 100.0, waited_ms=150.0)  # the budget was gone on arrival
    assert result.route == "light" and result.fallback == "timeout"
    assert _rank(_state(), "cascade", 100.0, waited_ms=None).route == "cascade"
