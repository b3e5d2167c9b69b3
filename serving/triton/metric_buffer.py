"""Custom-metric increments held in the ranker's stub and sent to Triton in batches.

Each ``Metric.increment`` / ``Metric.set`` is a synchronous round trip from the stub to the
server, so the request path only adds to this buffer; the ranker sends the sums at most
once per interval (a scrape lags by up to that interval). No Triton import: unit-tested.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class MetricBuffer:
    """Counter increments waiting to be sent, summed per key; ``interval_s`` = 0 sends every time."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval_s < 0:
            raise ValueError(f"metric interval must be >= 0 s, got {interval_s}")
        self.interval_s = interval_s
        self._clock = clock
        self._last = clock()
        self._pending: dict[Hashable, float] = {}

    def increment(self, key: Hashable, value: float) -> None:
        if value < 0:
            raise ValueError(f"counter {key!r} cannot decrease (increment {value})")
        self._pending[key] = self._pending.get(key, 0.0) + value

    def due(self) -> bool:
        """Whether something is pending and ``interval_s`` has passed since the last drain."""
        return bool(self._pending) and self._clock() - self._last >= self.interval_s

    def drain(self) -> dict[Hashable, float]:
        """The summed increments by key (then nothing is pending); restarts the interval."""
        pending, self._pending = self._pending, {}
        self._last = self._clock()
        return pending
