"""LoadMeter: the ranker instance's busy fraction and the queueing it implies (model_repository/load.py)."""

from __future__ import annotations

import pytest

from model_repository.load import RHO_CAP, LoadMeter


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
