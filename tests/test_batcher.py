"""serving/batcher.py: how a stage's candidates are split into scorer calls, and what one call's
failure or lateness does to the other requests of the batch (no server: scripted scorers)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from serving.batcher import CallPlan, ScoreBatcher, ScorerError, heavy_calls, light_calls
from serving.composition import SharedState
from serving.routing import CostModel, TierCost

D, C, E = 4, 4, 3
PRIORS = {"light": TierCost(1.0, 0.01), "heavy": TierCost(2.0, 0.02)}


@pytest.mark.parametrize(
    "n, size, lengths",
    [
        (0, 4, []),
        (1, 4, [1]),
        (4, 4, [4]),
        (5, 4, [3, 2]),
        (8, 4, [4, 4]),
        (10, 3, [3, 3, 2, 2]),
        (1025, 512, [342, 342, 341]),
        (7, 1, [1] * 7),
    ],
    ids=["empty", "one", "exact", "just-over", "two-full", "uneven", "balanced-1025", "size-one"],
)
def test_one_request_is_split_into_balanced_calls(n, size, lengths):
    plan = CallPlan(micro_batch=size, parallel_calls=1)
    calls = light_calls([n], plan)
    assert [sum(s.stop - s.start for s in call) for call in calls] == lengths
    covered = [i for call in calls for s in call for i in range(s.start, s.stop)]
    assert covered == list(range(n))
    assert all(sum(s.stop - s.start for s in call) <= size for call in calls)


@pytest.mark.parametrize(
    "kwargs", [{"micro_batch": 0}, {"micro_batch": -1}, {"split_min": 0}, {"parallel_calls": 0}, {"max_users": 0}]
)
def test_call_plan_rejects(kwargs):
    with pytest.raises(ValueError, match="must be >= 1"):
        CallPlan(**kwargs)


def test_call_plan_rejects_a_negative_stage():
    with pytest.raises(ValueError, match="must be >= 0"):
        CallPlan().call_sizes(-1)


@pytest.mark.parametrize(
    "total, expected",
    [(100, [100]), (1024, [512, 512]), (1500, [750, 750]), (8192, [2048] * 4), (1023, [1023])],
    ids=["small-one-call", "two-instances", "two-instances-1500", "max-per-call", "below-two-splits"],
)
def test_a_stage_uses_every_instance_but_keeps_calls_large(total, expected):
    assert CallPlan(micro_batch=2048, split_min=512, parallel_calls=2).call_sizes(total) == expected


def test_light_calls_share_a_call_across_requests():
    calls = light_calls([300, 100, 700], CallPlan(micro_batch=2048, split_min=512, parallel_calls=2))
    assert [[(s.ask, s.start, s.stop) for s in call] for call in calls] == [
        [(0, 0, 300), (1, 0, 100), (2, 0, 150)],
        [(2, 150, 700)],
    ]


def test_light_calls_close_at_max_users():
    calls = light_calls([1] * 5, CallPlan(micro_batch=100, max_users=2))
    assert [len(c) for c in calls] == [2, 2, 1]


def test_heavy_calls_pack_blocks_of_similar_size():
    plan = CallPlan(micro_batch=1024, split_min=512, parallel_calls=2)
    calls = heavy_calls([128, 1000, 128, 128, 128], plan)
    sizes = [[s.stop - s.start for s in call] for call in calls]
    # 1512 candidates: calls of 756 at most; the 1000-candidate request in two blocks of 500,
    # the four 128s together (4 x 128 padded = 512 <= 756).
    assert sizes == [[500], [500], [128, 128, 128, 128]]
    assert all(len(call) * call[0].stop - len(call) * call[0].start <= 756 for call in calls)


# --- ScoreBatcher: one call per tier for every request of a turn -----------------------------------


def _shared(seed: int, length: int) -> SharedState:
    rng = np.random.default_rng(seed)
    return SharedState(
        rng.standard_normal((1, D)).astype(np.float32), rng.standard_normal((1, length, D)).astype(np.float32)
    )


def _cands(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, C, E)).astype(np.float32)


class Scorer:
    """A deterministic scorer per tier: light = candidate sum + its user's state sum; heavy adds
    its user's valid history sum (padding must not leak in). Records every call's inputs."""

    def __init__(self, fail_if: callable | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.fail_if, self.delay_s = fail_if, delay_s

    async def __call__(self, tier: str, inputs: dict) -> np.ndarray:
        self.calls.append((tier, inputs))
        await asyncio.sleep(self.delay_s)
        if self.fail_if is not None and self.fail_if(tier, inputs):
            raise ScorerError(f"scorer_{tier}: injected")
        if tier == "light":
            return inputs["candidate_emb"].sum(axis=(1, 2)) + inputs["user_state"].sum(axis=1)[inputs["candidate_user"]]
        valid = np.arange(inputs["history_kv"].shape[1])[None] < inputs["history_len"][:, None]  # (B, L)
        hist = (inputs["history_kv"].sum(axis=2) * valid).sum(axis=1)  # (B,)
        return inputs["candidate_emb"].sum(axis=(2, 3)) + (inputs["user_state"].sum(axis=1) + hist)[:, None]


def expected(tier: str, shared: SharedState, cands: np.ndarray) -> np.ndarray:
    user = shared.user_state.sum() + (shared.history_kv.sum() if tier == "heavy" else 0.0)
    return cands.sum(axis=(1, 2)) + user


def _batcher(scorer: Scorer, **plan) -> ScoreBatcher:
    return ScoreBatcher(scorer, CostModel(PRIORS), CallPlan(**plan))


@pytest.mark.parametrize("tier", ["light", "heavy"])
def test_concurrent_asks_become_one_call_with_every_user(tier: str):
    scorer = Scorer()
    batcher = _batcher(scorer)
    users = [_shared(i, length) for i, length in enumerate((3, 9, 5))]
    cands = [_cands(n, 10 + i) for i, n in enumerate((7, 2, 11))]

    async def go():
        return await asyncio.gather(*(batcher.score(tier, u, c) for u, c in zip(users, cands)))

    got = asyncio.run(go())
    assert len(scorer.calls) == 1, "one call for the three requests"
    _, inputs = scorer.calls[0]
    assert inputs["user_state"].shape == (3, D), "one row per user, never one per candidate"
    for u, c, g in zip(users, cands, got):
        np.testing.assert_allclose(g, expected(tier, u, c), rtol=1e-6)
        assert g.dtype == np.float32


def test_asks_of_a_later_turn_get_their_own_call():
    scorer = Scorer()
    batcher = _batcher(scorer)

    async def go():
        first = await batcher.score("light", _shared(0, 3), _cands(4, 0))
        second = await batcher.score("light", _shared(1, 3), _cands(4, 1))
        return first, second

    asyncio.run(go())
    assert len(scorer.calls) == 2


def test_a_failed_call_is_retried_request_by_request():
    """The call fails whenever it holds the poisoned request: the others still get their scores."""
    poisoned = _cands(5, 99)
    poisoned[0, 0, 0] = 123.0
    scorer = Scorer(fail_if=lambda tier, inputs: bool((inputs["candidate_emb"] == 123.0).any()))
    batcher = _batcher(scorer)
    users = [_shared(i, 4) for i in range(3)]
    cands = [_cands(5, 1), poisoned, _cands(5, 2)]

    async def go():
        return await asyncio.gather(
            *(batcher.score("light", u, c) for u, c in zip(users, cands)), return_exceptions=True
        )

    got = asyncio.run(go())
    assert isinstance(got[1], ScorerError) and "injected" in str(got[1])
    np.testing.assert_allclose(got[0], expected("light", users[0], cands[0]), rtol=1e-6)
    np.testing.assert_allclose(got[2], expected("light", users[2], cands[2]), rtol=1e-6)
    assert len(scorer.calls) == 1 + 3  # the batch, then each request alone


def test_a_request_that_gives_up_leaves_the_call_to_the_others():
    scorer = Scorer(delay_s=0.2)
    batcher = _batcher(scorer)

    async def go():
        impatient = asyncio.wait_for(batcher.score("heavy", _shared(0, 3), _cands(4, 0)), 0.05)
        patient = batcher.score("heavy", _shared(1, 3), _cands(4, 1))
        return await asyncio.gather(impatient, patient, return_exceptions=True)

    got = asyncio.run(go())
    assert isinstance(got[0], TimeoutError)
    np.testing.assert_allclose(got[1], expected("heavy", _shared(1, 3), _cands(4, 1)), rtol=1e-6)


def test_the_cost_model_learns_each_stage():
    scorer = Scorer()
    cost = CostModel(PRIORS, min_observations=2)
    batcher = ScoreBatcher(scorer, cost, CallPlan())

    async def stage(n: int):
        await asyncio.gather(
            batcher.score("light", _shared(0, 3), _cands(n, 0)), batcher.score("light", _shared(1, 3), _cands(n, 1))
        )

    async def go():
        await stage(10)
        await stage(40)

    asyncio.run(go())
    assert cost.cost("light") != PRIORS["light"]  # two observations of the stages' totals (20 and 80)
