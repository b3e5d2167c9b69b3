"""MetricBuffer: the ranker's batched custom-metric updates (serving/triton/metric_buffer.py)."""

from __future__ import annotations

import pytest

from serving.triton.metric_buffer import MetricBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_counters_sum_per_key() -> None:
    buf = MetricBuffer(0.25, Clock())
    buf.increment(("requests", "route", "light"), 1)
    buf.increment(("requests", "route", "light"), 1)
    buf.increment(("latency", "route", "light"), 2.5)
    assert buf.drain() == {("requests", "route", "light"): 2.0, ("latency", "route", "light"): 2.5}
    assert not buf.drain()  # drained: nothing is sent twice


def test_due_after_the_interval_and_only_with_something_pending() -> None:
    clock = Clock()
    buf = MetricBuffer(0.25, clock)
    clock.now = 1.0
    assert not buf.due()  # nothing pending
    buf.increment("requests", 1)
    clock.now = 1.1
    assert buf.due()  # 1.1 s since creation
    buf.drain()
    buf.increment("requests", 1)
    clock.now = 1.2
    assert not buf.due()  # 0.1 s since the drain
    clock.now = 1.35
    assert buf.due()


def test_zero_interval_is_always_due_when_pending() -> None:
    buf = MetricBuffer(0.0, Clock())
    assert not buf.due()
    buf.increment("requests", 1)
    assert buf.due()


@pytest.mark.parametrize("bad", [-1.0, -0.001])
def test_bad_values_are_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        MetricBuffer(bad)
    with pytest.raises(ValueError, match="cannot decrease"):
        MetricBuffer(0.1).increment("requests", bad)
