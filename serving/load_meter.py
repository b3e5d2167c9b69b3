"""auto's load signal: how long a request has likely queued before its ranker instance.

The ranker cannot see the queues in front of it, but it sees how busy it is: with busy
fraction rho over a window and mean service time S, a request has waited about
rho / (1 - rho) * S (the M/M/1 mean wait), which auto subtracts from the budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

RHO_CAP = 0.98  # a saturated instance reads as a 49x-service-time wait, not infinity


class LoadMeter:
    """Busy fraction over a sliding window and the mean wait it implies (per ranker instance)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.perf_counter, ewma: float = 0.2) -> None:
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"load window must be finite and > 0 s, got {window_s}")
        self.window_s = window_s
        self._clock = clock
        self._ewma = ewma
        self._busy: deque[tuple[float, float]] = deque()  # (start, end) of answered requests, oldest first
        self.service_ms = 0.0  # EWMA of the ranker's time per request

    def record(self, start: float, end: float) -> None:
        """A request was being ranked from ``start`` to ``end`` (clock seconds)."""
        if end < start:
            raise ValueError(f"busy interval ends before it starts: {start} > {end}")
        self._busy.append((start, end))
        ms = (end - start) * 1e3
        self.service_ms = ms if self.service_ms == 0 else (1 - self._ewma) * self.service_ms + self._ewma * ms
        self._expire(self._clock())

    def _expire(self, now: float) -> None:
        while self._busy and self._busy[0][1] <= now - self.window_s:
            self._busy.popleft()

    def utilization(self) -> float:
        """Fraction of the last ``window_s`` this instance spent ranking, in [0, 1]."""
        now = self._clock()
        self._expire(now)
        lo = now - self.window_s
        busy = sum(min(end, now) - max(start, lo) for start, end in self._busy if end > lo)
        return min(1.0, max(0.0, busy / self.window_s))

    def expected_wait_ms(self) -> float:
        """Mean wait before a request reaches the ranker at the current load (0 when idle)."""
        rho = min(self.utilization(), RHO_CAP)
        return rho / (1 - rho) * self.service_ms
