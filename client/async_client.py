"""Many ranking requests at once with tritonclient's asyncio clients.

    import asyncio
    from client.async_client import infer_many, summarize
    outcomes = asyncio.run(infer_many("127.0.0.1:8001", requests, protocol="grpc", concurrency=8, timeout_s=1.0))
    failed = [o for o in outcomes if not o.ok]

One ``tritonclient.grpc.aio`` (or ``tritonclient.http.aio``) client sends every request;
a semaphore keeps at most ``concurrency`` of them in flight. Each request has its own
client-side timeout: gRPC's ``client_timeout`` deadline, over HTTP ``asyncio.wait_for``
(the HTTP client has no per-call one). A request that fails (error answer, timeout,
unreachable server) becomes an ``Outcome`` carrying tritonclient's exception; the others
go on. Outcomes come back in the order of ``requests``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import tritonclient.http as httpclient
import tritonclient.http.aio as httpaio
from tritonclient.utils import InferenceServerException

from client.ranking_client import (
    MODEL_NAME,
    RankingRequest,
    build_inputs,
    request_parameters,
    requested_outputs,
    result_from_response,
)
from serving.contract import RankingResult

PROTOCOLS: tuple[str, ...] = ("grpc", "http")
_HTTP_CONNECTION_TIMEOUT_S = 60.0  # the aiohttp session's own limit, kept above timeout_s


@dataclass(frozen=True)
class Outcome:
    """The answer to ``requests[index]``: a result, or the exception that replaced it."""

    index: int
    result: RankingResult | None
    error: Exception | None
    latency_s: float  # the call itself, from leaving the semaphore's queue to its answer or error

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def timed_out(self) -> bool:
        """The client gave up (gRPC deadline or HTTP wait_for), not the server."""
        if isinstance(self.error, InferenceServerException):
            return str(self.error.status()) == "StatusCode.DEADLINE_EXCEEDED"
        return isinstance(self.error, TimeoutError)


async def infer_many(
    url: str,
    requests: Sequence[RankingRequest | dict[str, np.ndarray]],
    protocol: str = "grpc",
    concurrency: int = 8,
    timeout_s: float | None = None,
    route: str | None = None,
    latency_budget_ms: float | None = None,
    top_k: int | None = None,
) -> list[Outcome]:
    """Send ``requests`` to ``url`` (``host:port``) with at most ``concurrency`` in flight;
    one Outcome per request, in order, errors included (module docstring)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    if timeout_s is not None and timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    module = grpcclient if protocol == "grpc" else httpclient
    semaphore = asyncio.Semaphore(concurrency)
    if protocol == "grpc":
        client = grpcaio.InferenceServerClient(url)
    else:
        limit = max(_HTTP_CONNECTION_TIMEOUT_S, 2 * (timeout_s or 0.0))
        client = httpaio.InferenceServerClient(url, conn_limit=concurrency, conn_timeout=limit)

    async def send(inputs: list) -> object:
        outputs = requested_outputs(module)
        parameters = request_parameters(route, latency_budget_ms) or None  # stamped as it is sent
        if protocol == "grpc":
            call = client.infer(MODEL_NAME, inputs, outputs=outputs, parameters=parameters, client_timeout=timeout_s)
            return await call
        call = client.infer(MODEL_NAME, inputs, outputs=outputs, parameters=parameters)
        return await asyncio.wait_for(call, timeout_s)  # None: no limit

    async def one(index: int, request: RankingRequest | dict[str, np.ndarray]) -> Outcome:
        arrays = request.arrays() if isinstance(request, RankingRequest) else request
        async with semaphore:
            start = time.perf_counter()
            try:
                inputs = build_inputs(module, arrays, top_k)
                result = result_from_response(await send(inputs))
            except TimeoutError:  # HTTP's wait_for (gRPC reports DEADLINE_EXCEEDED instead)
                error = TimeoutError(f"no answer within {timeout_s:g} s")
                return Outcome(index, None, error, time.perf_counter() - start)
            except Exception as e:  # one request's failure is its outcome, not the batch's
                return Outcome(index, None, e, time.perf_counter() - start)
            return Outcome(index, result, None, time.perf_counter() - start)

    try:
        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))
    finally:
        await client.close()


@dataclass(frozen=True)
class Summary:
    count: int
    answered: int
    errors: int
    timeouts: int
    p50_ms: float | None  # over answered requests; None when none was answered
    p99_ms: float | None
    candidates_per_s: float  # candidates of answered requests / wall time
    wall_s: float
    routes: dict[str, int] = field(default_factory=dict)  # route taken -> answered requests


def summarize(outcomes: Sequence[Outcome], wall_s: float) -> Summary:
    """Counts, latency percentiles and throughput of one ``infer_many`` run that took ``wall_s``."""
    answered = [o for o in outcomes if o.ok]
    latencies_ms = np.array([o.latency_s * 1e3 for o in answered])
    p50, p99 = (float(np.percentile(latencies_ms, q)) for q in (50, 99)) if answered else (None, None)
    candidates = sum(o.result.scores.size for o in answered)
    return Summary(
        count=len(outcomes),
        answered=len(answered),
        errors=len(outcomes) - len(answered),
        timeouts=sum(o.timed_out for o in outcomes),
        p50_ms=p50,
        p99_ms=p99,
        candidates_per_s=candidates / wall_s if wall_s > 0 else 0.0,
        wall_s=wall_s,
        routes=dict(sorted(Counter(o.result.route for o in answered).items())),
    )
