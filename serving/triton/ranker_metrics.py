"""The ranker's custom metrics (``ranker_*`` on the metrics port), sent in batches.

The request path only adds to a MetricBuffer; ``flush`` sends the sums and sets the load
gauges, from a task of the stub's event loop every interval (each update is a round trip
from the stub to the server).
"""

from __future__ import annotations

import asyncio

import triton_python_backend_utils as pb_utils

from serving.load_meter import LoadMeter
from serving.ranker import RankResult
from serving.triton.metric_buffer import MetricBuffer


class RankerMetrics:
    def __init__(self, interval_s: float, load: LoadMeter | None) -> None:
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.requests = pb_utils.MetricFamily("ranker_requests_total", "Requests answered, by route taken", counter)
        self.candidates = pb_utils.MetricFamily("ranker_candidates_scored_total", "Candidates scored, by tier", counter)
        self.misses = pb_utils.MetricFamily("ranker_budget_misses_total", "Requests over their latency budget", counter)
        self.latency = pb_utils.MetricFamily("ranker_latency_ms_total", "Summed ranker latency (ms), by route", counter)
        self.fallbacks = pb_utils.MetricFamily(
            "ranker_fallbacks_total", "Cascade / auto requests answered by light as heavy failed or was late", counter
        )
        # The families stay referenced: a Metric outliving its family is an error in 2.51.
        self.utilization = pb_utils.MetricFamily(
            "ranker_utilization", "Busy fraction of this ranker instance over its load window", gauge
        )
        self.wait = pb_utils.MetricFamily(
            "ranker_expected_wait_ms", "Likely queueing before the ranker now (auto's load signal)", gauge
        )
        self.g_utilization = self.utilization.Metric(labels={})
        self.g_wait = self.wait.Metric(labels={})
        self.buffer = MetricBuffer(interval_s)
        self.load = load
        self._by_label: dict[tuple[int, str], object] = {}
        self._flusher: asyncio.Task | None = None

    def record(self, result: RankResult, elapsed_ms: float, over_budget: bool) -> None:
        """One answered request (buffered: no round trip)."""
        add = self.buffer.increment
        add((self.requests, "route", result.route), 1.0)
        add((self.latency, "route", result.route), elapsed_ms)
        for tier, n in result.candidates_scored.items():
            add((self.candidates, "tier", tier), n)
        if result.fallback is not None:
            add((self.fallbacks, "reason", result.fallback), 1.0)
        if over_budget:
            add((self.misses, "route", result.route), 1.0)

    def _metric(self, family: object, label: str, value: str) -> object:
        key = (id(family), value)
        if key not in self._by_label:
            self._by_label[key] = family.Metric(labels={label: value})
        return self._by_label[key]

    def flush(self) -> None:
        """Send the buffered increments to Triton and set the load gauges."""
        for (family, label, value), amount in self.buffer.drain().items():
            self._metric(family, label, value).increment(amount)
        if self.load is not None:
            self.g_utilization.set(self.load.utilization())
            self.g_wait.set(self.load.expected_wait_ms())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.buffer.interval_s)
            if self.buffer.due():
                self.flush()

    def after_execute(self) -> None:
        """Called at the end of every execute(): keeps the flusher task alive (the stub's event
        loop outlives execute), or flushes inline when the interval is 0."""
        if self.buffer.interval_s == 0:
            if self.buffer.due():
                self.flush()
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.flush()
