"""The scorer calls of one execute()'s requests, made together: one call per tier per micro-batch.

Each request's route runs as its own coroutine (serving/ranker.py) and asks for scores with
``await batcher.score(tier, shared, candidate_emb)``. The batcher collects every ask made before
the event loop next runs its callbacks (all requests of a stage ask in the same turn), splits
the tier's candidates into balanced calls (light: a flat list with ``candidate_user``; heavy:
one padded block per user row, blocks of similar size together) and answers each ask with its
own scores. A failed call with several users is retried user by user, so one request cannot
fail another's answer. The cost model learns from each stage's total candidates and wall time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from serving import arrays
from serving.arrays import Array
from serving.composition import SharedState, heavy_inputs, light_inputs, split_scores
from serving.contract import B_MAX
from serving.routing import CostModel

# call_fn(tier, inputs) -> the scorer's ``scores`` output: one BLS request (or an ONNX Runtime run in tests).
CallFn = Callable[[str, dict[str, Array]], Awaitable[Array]]


class ScorerError(RuntimeError):
    """A scorer call failed (not the client's fault); the message names the scorer."""


@dataclass(frozen=True)
class CallPlan:
    """How a stage's candidates are split: at least ``parallel_calls`` calls of at least
    ``split_min`` candidates each (so a lone large request uses every scorer instance), at
    most ``micro_batch`` (padded) candidates and ``max_users`` users per call."""

    micro_batch: int = 2048
    split_min: int = 512
    parallel_calls: int = 2
    max_users: int = B_MAX

    def __post_init__(self) -> None:
        if min(self.micro_batch, self.split_min, self.parallel_calls, self.max_users) < 1:
            raise ValueError(f"call plan sizes must be >= 1, got {self}")

    def call_sizes(self, total: int) -> list[int]:
        """Candidates per call for a stage of ``total``, balanced (they differ by at most one):
        1025 at micro_batch 512 (one instance) gives 342, 342, 341 rather than 512, 512, 1."""
        if total < 0:
            raise ValueError(f"a stage's candidate count must be >= 0, got {total}")
        calls = max(math.ceil(total / self.micro_batch), min(self.parallel_calls, total // self.split_min))
        if calls == 0:
            return []
        base, extra = divmod(total, calls)
        return [base + 1] * extra + [base] * (calls - extra)


@dataclass
class _Ask:
    shared: SharedState
    candidates: Array  # (n, C, E)
    future: asyncio.Future
    pieces: dict[int, Array] = field(default_factory=dict)  # start offset -> scores of that slice
    failed: bool = False


@dataclass(frozen=True)
class _Slice:
    ask: int  # index into the stage's asks
    start: int
    stop: int


def light_calls(counts: list[int], plan: CallPlan) -> list[list[_Slice]]:
    """Consecutive slices of the asks' candidates filling ``plan.call_sizes(total)`` in order
    (a call also closes at ``max_users`` users)."""
    sizes = plan.call_sizes(sum(counts))
    calls: list[list[_Slice]] = []
    room = 0
    for ask, n in enumerate(counts):
        start = 0
        while start < n:
            if room == 0 or len(calls[-1]) == plan.max_users:
                room = sizes[len(calls)] if len(calls) < len(sizes) else sizes[-1]
                calls.append([])
            stop = min(n, start + room)
            calls[-1].append(_Slice(ask, start, stop))
            room -= stop - start
            start = stop
    return calls


def heavy_calls(counts: list[int], plan: CallPlan) -> list[list[_Slice]]:
    """Blocks of at most the largest call size (a larger ask is split evenly), largest first,
    packed while a call's padded size (blocks x largest block) stays within that size (within
    ``split_min`` for a stage too small to split; never above ``micro_batch``). Two blocks of one
    ask never share a call: its user row would be sent twice."""
    sizes = plan.call_sizes(sum(counts))
    if not sizes:
        return []
    per_call = min(plan.micro_batch, max(sizes[0], plan.split_min))
    blocks = []
    for ask, n in enumerate(counts):
        pieces = math.ceil(n / sizes[0])
        for i in range(pieces):
            blocks.append(_Slice(ask, n * i // pieces, n * (i + 1) // pieces))
    blocks.sort(key=lambda b: b.stop - b.start, reverse=True)
    calls: list[list[_Slice]] = []
    for block in blocks:
        last = calls[-1] if calls else None
        fits = last and len(last) < plan.max_users and (len(last) + 1) * (last[0].stop - last[0].start) <= per_call
        if fits and all(b.ask != block.ask for b in last):
            last.append(block)
        else:
            calls.append([block])
    return calls


PACKERS = {"light": light_calls, "heavy": heavy_calls}
BUILDERS = {"light": light_inputs, "heavy": heavy_inputs}


class ScoreBatcher:
    def __init__(self, call_fn: CallFn, cost: CostModel, plan: CallPlan) -> None:
        self.call_fn, self.cost, self.plan = call_fn, cost, plan
        self._asks: dict[str, list[_Ask]] = {"light": [], "heavy": []}
        self._scheduled = False
        self._stages: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    async def score(self, tier: str, shared: SharedState, candidate_emb: Array) -> Array:
        """Scores [n] of ``tier`` for one request's ``candidate_emb`` [n, C, E]; ScorerError if its call failed."""
        loop = asyncio.get_running_loop()
        ask = _Ask(shared, candidate_emb, loop.create_future())
        # A request that gave up never reads its failure: mark it retrieved so asyncio does not log it.
        ask.future.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._asks[tier].append(ask)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after every coroutine that can still ask in this turn
        return await asyncio.shield(ask.future)  # a request giving up (its deadline) leaves the call running

    def _flush(self) -> None:
        self._scheduled = False
        for tier, asks in self._asks.items():
            if asks:
                self._asks[tier] = []
                task = asyncio.ensure_future(self._stage(tier, asks))
                self._stages.add(task)
                task.add_done_callback(self._stages.discard)

    async def _stage(self, tier: str, asks: list[_Ask]) -> None:
        start = time.perf_counter()
        calls = PACKERS[tier]([a.candidates.shape[0] for a in asks], self.plan)
        results = await asyncio.gather(*(self._call(tier, asks, c) for c in calls), return_exceptions=True)
        if not any(isinstance(r, BaseException) for r in results):
            self.cost.observe(tier, sum(a.candidates.shape[0] for a in asks), (time.perf_counter() - start) * 1e3)
        retry = []
        for slices, result in zip(calls, results):
            if isinstance(result, BaseException):
                if len({s.ask for s in slices}) > 1:
                    retry.extend(slices)  # isolate: each request's slice on its own
                else:
                    self._fail(asks[slices[0].ask], result)
            else:
                self._deliver(asks, slices, result)
        retried = await asyncio.gather(*(self._call(tier, asks, [s]) for s in retry), return_exceptions=True)
        for s, result in zip(retry, retried):
            if isinstance(result, BaseException):
                self._fail(asks[s.ask], result)
            else:
                self._deliver(asks, [s], result)

    async def _call(self, tier: str, asks: list[_Ask], slices: list[_Slice]) -> list[Array]:
        users = [asks[s.ask].shared for s in slices]
        candidates = [asks[s.ask].candidates[s.start : s.stop] for s in slices]
        counts = [s.stop - s.start for s in slices]
        scores = await self.call_fn(tier, BUILDERS[tier](users, candidates))
        expected = (sum(counts),) if tier == "light" else (len(counts), max(counts))
        if tuple(scores.shape) != expected:
            raise ScorerError(f"scorer_{tier} returned scores of shape {list(scores.shape)}, expected {list(expected)}")
        return split_scores(tier, scores, counts)

    def _deliver(self, asks: list[_Ask], slices: list[_Slice], scores: list[Array]) -> None:
        for s, part in zip(slices, scores):
            ask = asks[s.ask]
            ask.pieces[s.start] = part
            if not ask.failed and sum(p.shape[0] for p in ask.pieces.values()) == ask.candidates.shape[0]:
                ordered = [ask.pieces[k] for k in sorted(ask.pieces)]
                scores = ordered[0] if len(ordered) == 1 else arrays.concatenate(ordered)
                if not ask.future.done():
                    ask.future.set_result(arrays.float32(scores))

    @staticmethod
    def _fail(ask: _Ask, exc: BaseException) -> None:
        ask.failed = True
        if not ask.future.done():
            error = exc if isinstance(exc, ScorerError) else ScorerError(f"scorer call failed: {exc!r}")
            ask.future.set_exception(error)
