"""Closed-loop client threads for the scale test: each sends the request pool round-robin
through the Serve proxy with client.ranking_client and checks every answer against the
single server's answer to the same request."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import tritonclient.http as httpclient

from client.ranking_client import RankingRequest, infer
from serving.contract import RankingResult

ROUTE, BUDGET_MS = "cascade", 60_000.0  # a budget no queue reaches: the answer never depends on load


@dataclass
class Tally:
    """Requests of one phase (updated by the client threads under ``lock``)."""

    sent: int = 0
    ok: int = 0
    errors: int = 0
    wrong: int = 0
    first_error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def same_answer(got: RankingResult, want: RankingResult) -> bool:
    # Each replica runs the same models on the same CPU kernels as the reference server.
    return (
        got.route == want.route
        and np.array_equal(got.top_ids, want.top_ids)
        and np.allclose(got.scores, want.scores, rtol=1e-5, atol=1e-6)
    )


class Load:
    """Client threads sending the pool round-robin through the Serve proxy until stopped."""

    def __init__(self, url: str, pool: list[RankingRequest], want: list[RankingResult]) -> None:
        self.url, self.pool, self.want = url, pool, want
        self.threads: list[threading.Thread] = []
        self.stop_event = threading.Event()
        self.tally = Tally()

    def start(self, clients: int, tally: Tally) -> None:
        self.stop_event, self.tally = threading.Event(), tally
        self.threads = [threading.Thread(target=self._run, args=(i, self.stop_event, tally)) for i in range(clients)]
        for thread in self.threads:
            thread.start()

    def _run(self, index: int, stop: threading.Event, tally: Tally) -> None:
        client = httpclient.InferenceServerClient(self.url, network_timeout=120.0, connection_timeout=30.0)
        i = index
        try:
            while not stop.is_set():
                k = i % len(self.pool)
                i += 1
                with tally.lock:
                    tally.sent += 1
                try:
                    got = infer(client, self.pool[k], route=ROUTE, latency_budget_ms=BUDGET_MS)
                except Exception as e:  # counted, and the first one reported: any failure fails the test
                    with tally.lock:
                        tally.errors += 1
                        tally.first_error = tally.first_error or f"{type(e).__name__}: {e}"
                    continue
                with tally.lock:
                    if same_answer(got, self.want[k]):
                        tally.ok += 1
                    else:
                        tally.wrong += 1
        finally:
            client.close()

    def stop(self, join_timeout_s: float = 150.0) -> int:
        """Stop after the requests in flight are answered; returns the threads still stuck (lost)."""
        self.stop_event.set()
        deadline = time.monotonic() + join_timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return sum(t.is_alive() for t in self.threads)
