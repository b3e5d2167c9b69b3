"""The synthetic world (export/world.py) and the ranking metrics (export/metrics.py)."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from export.config import PRESETS, WorldConfig, cardinalities
from export.metrics import auc, ndcg_at_k
from export.world import (
    CLICK,
    SOURCE_INTEREST,
    SOURCE_POPULAR,
    SOURCE_SIMILAR,
    ClickComponents,
    Requests,
    World,
    make_world,
)
from serving import contract as signature

TINY = PRESETS["tiny"].world
SMALL = PRESETS["small"].world
REQUEST_FIELDS = [f.name for f in dataclasses.fields(Requests)]


@pytest.fixture(scope="module")
def tiny() -> World:
    return make_world(TINY)


@pytest.fixture(scope="module")
def small() -> tuple[World, Requests, ClickComponents]:
    t0 = time.perf_counter()
    world = make_world(SMALL)
    train, truth = world.sample_requests_with_truth(SMALL.train_requests, SMALL.train_candidates, world.train_seed)
    world.eval_requests()
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"small preset generation took {elapsed:.1f} s"
    return world, train, truth


def _assert_same(a: Requests, b: Requests) -> None:
    for name in REQUEST_FIELDS:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


# -- determinism and seeds -------------------------------------------------------------------


def test_world_is_deterministic_in_seed(tiny: World) -> None:
    again = make_world(TINY)
    for f in dataclasses.fields(World):
        a, b = getattr(tiny, f.name), getattr(again, f.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=f.name)
        else:
            assert a == b, f.name
    other = make_world(dataclasses.replace(TINY, seed=1))
    assert not np.array_equal(tiny.item_vec, other.item_vec)
    assert not np.array_equal(tiny.item_topic, other.item_topic)


def test_requests_are_deterministic_in_seed(tiny: World) -> None:
    a = tiny.sample_requests(50, 16, seed=7)
    _assert_same(a, tiny.sample_requests(50, 16, seed=7))
    _assert_same(a, make_world(TINY).sample_requests(50, 16, seed=7))
    assert not np.array_equal(a.candidate_ids, tiny.sample_requests(50, 16, seed=8).candidate_ids)


def test_train_and_eval_use_disjoint_seeds(tiny: World) -> None:
    assert tiny.train_seed != tiny.eval_seed
    train, ev = tiny.train_requests(), tiny.eval_requests()
    assert (len(train), train.n_candidates) == (TINY.train_requests, TINY.train_candidates)
    assert (len(ev), ev.n_candidates) == (TINY.eval_requests, TINY.eval_candidates)
    # Same shape from the train seed is a different draw than the eval split.
    same_shape = tiny.sample_requests(TINY.eval_requests, TINY.eval_candidates, tiny.train_seed)
    assert not np.array_equal(same_shape.candidate_ids, ev.candidate_ids)
    assert not np.array_equal(same_shape.user_features, ev.user_features)


# -- shapes, dtypes, ranges ------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_request_contract(preset: str) -> None:
    cfg = PRESETS[preset].world
    world = make_world(cfg)
    req = world.sample_requests(200, 40, seed=3)
    r, n = 200, 40
    l_pad = req.history_ids.shape[1]
    assert req.user_features.shape == (r, signature.F_U)
    assert req.history_ids.shape == (r, l_pad) and req.history_len.shape == (r,)
    assert req.candidate_ids.shape == (r, n)
    assert req.candidate_features.shape == (r, n, signature.F_C)
    assert req.labels.shape == req.relevance.shape == (r, n)
    for name in ("user_features", "history_ids", "history_len", "candidate_ids", "candidate_features"):
        assert getattr(req, name).dtype == np.int64, name
    assert req.labels.dtype == req.relevance.dtype == np.float32

    card = cardinalities(cfg)
    for j, feat in enumerate(signature.USER_FEATURES):
        col = req.user_features[:, j]
        assert 0 <= col.min() and col.max() < card[feat], feat
    for j, feat in enumerate(signature.CANDIDATE_FEATURES):
        col = req.candidate_features[..., j]
        assert 0 <= col.min() and col.max() < card[feat], feat
    for ids in (req.history_ids, req.candidate_ids):
        assert 0 <= ids.min() and ids.max() < card[signature.ITEM_FEATURE]

    assert cfg.history_min <= req.history_len.min() and req.history_len.max() <= cfg.history_max
    assert l_pad == req.history_len.max() <= signature.L_MAX
    padding = np.arange(l_pad)[None, :] >= req.history_len[:, None]
    assert (req.history_ids[padding] == 0).all()
    np.testing.assert_array_equal(req.candidate_features, world.item_features(req.candidate_ids))
    assert set(np.unique(req.labels)) <= {0.0, 1.0}
    assert (req.relevance > 0).all() and (req.relevance < 1).all()


def test_item_features_shape_and_bad_ids(tiny: World) -> None:
    assert tiny.item_features(np.arange(6).reshape(2, 3)).shape == (2, 3, signature.F_C)
    assert tiny.popularity.shape == (TINY.n_items,)
    assert tiny.popularity.min() > 0 and tiny.popularity.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="item ids"):
        tiny.item_features(np.array([TINY.n_items]))


def test_creators_mostly_one_topic(tiny: World) -> None:
    same = tiny.item_topic == tiny.creator_topic[tiny.item_creator]
    assert same.mean() > 0.8


def test_subset_trims_padding(tiny: World) -> None:
    req = tiny.sample_requests(30, 8, seed=1)
    idx = np.argsort(req.history_len)[:5]
    sub = req.subset(idx)
    assert len(sub) == 5
    assert sub.history_ids.shape[1] == sub.history_len.max()
    np.testing.assert_array_equal(sub.candidate_ids, req.candidate_ids[idx])
    np.testing.assert_array_equal(sub.history_ids, req.history_ids[idx, : sub.history_len.max()])
    assert len(req.subset(slice(10, 20))) == 10


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_requests": 0, "n_candidates": 8, "seed": 0}, "n_requests"),
        ({"n_requests": 4, "n_candidates": 0, "seed": 0}, "n_candidates"),
        ({"n_requests": 4, "n_candidates": signature.N_MAX + 1, "seed": 0}, "n_candidates"),
    ],
    ids=["no-requests", "no-candidates", "too-many-candidates"],
)
def test_sample_requests_rejects_bad_arguments(tiny: World, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tiny.sample_requests(**kwargs)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_items": 0}, "n_items"),
        ({"n_topics": 100, "n_items": 50}, "n_topics"),
        ({"history_min": 10, "history_max": 5}, "history_min"),
        ({"history_max": signature.L_MAX + 1}, "L_MAX"),
    ],
    ids=["no-items", "fewer-items-than-topics", "min-above-max", "history-above-L_MAX"],
)
def test_make_world_rejects_bad_config(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_world(dataclasses.replace(WorldConfig(), **change))


# -- the click model -------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_click_rate_in_range(preset: str) -> None:
    world = make_world(PRESETS[preset].world)
    for req in (world.train_requests(), world.eval_requests()):
        rate = float(req.labels.mean())
        assert 0.10 <= rate <= 0.30, rate
        assert abs(rate - float(req.relevance.mean())) < 0.02


def test_relevance_is_the_click_model(small: tuple[World, Requests, ClickComponents]) -> None:
    world, train, truth = small
    logit = (
        CLICK.pref * truth.pref_affinity
        + CLICK.history_sim * truth.history_sim
        + CLICK.log_popularity * truth.log_popularity
        + CLICK.intent * truth.intent_match
        + world.click_bias
    )
    np.testing.assert_allclose(truth.logit, logit, atol=1e-4)
    np.testing.assert_allclose(train.relevance, 1 / (1 + np.exp(-logit)), atol=1e-5)


def test_signal_ordering(small: tuple[World, Requests, ClickComponents]) -> None:
    """The candidate-history interaction beats long-term preference + popularity; popularity alone is weak."""
    _, train, truth = small
    y = train.labels
    oracle = auc(truth.logit, y)
    history = auc(truth.history_sim, y)
    pref_pop = auc(CLICK.pref * truth.pref_affinity + CLICK.log_popularity * truth.log_popularity, y)
    popularity = auc(truth.log_popularity, y)
    assert oracle > history > pref_pop + 0.05 > popularity
    assert popularity > 0.55
    assert popularity < oracle - 0.15


def test_every_candidate_source_has_positives(small: tuple[World, Requests, ClickComponents]) -> None:
    _, train, truth = small
    sources = (SOURCE_POPULAR, SOURCE_INTEREST, SOURCE_SIMILAR)
    rates = [train.labels[truth.candidate_source == s].mean() for s in sources]
    assert all(r > 0.02 for r in rates)
    assert rates[0] < rates[1] < rates[2]  # similar-to-history candidates click most


def test_recent_history_follows_session_intent(small: tuple[World, Requests, ClickComponents]) -> None:
    world, train, truth = small
    rows = np.arange(len(train))
    last = train.history_ids[rows, train.history_len - 1]
    first = train.history_ids[:, 0]
    recent_share = (world.item_topic[last] == truth.session_intent).mean()
    oldest_share = (world.item_topic[first] == truth.session_intent).mean()
    assert recent_share > 0.7
    assert recent_share > oldest_share + 0.2


# -- metrics ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "labels", "expected"),
    [
        ([1, 2, 3, 4], [0, 0, 1, 1], 1.0),
        ([4, 3, 2, 1], [0, 0, 1, 1], 0.0),
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([1, 1, 1, 1], [0, 1, 0, 1], 0.5),
        ([1, 2, 2, 3], [0, 1, 0, 1], 3.5 / 4),
        ([[1, 2], [3, 4]], [[0, 1], [0, 1]], 0.75),
        ([5, 1, 3], [1, 0, 0], 1.0),
    ],
    ids=["perfect", "reversed", "one-swap", "all-tied", "one-tied-pair", "2d-flattened", "single-positive"],
)
def test_auc(scores: list, labels: list, expected: float) -> None:
    assert auc(np.array(scores, dtype=float), np.array(labels)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "match"),
    [
        ([1, 2, 3], [1, 1, 1], "both classes"),
        ([1, 2, 3], [0, 0, 0], "both classes"),
        ([1, 2, 3], [0, 1], "shape"),
        ([1, 2, 3], [0, 2, 1], "0/1"),
        ([1, np.nan, 3], [0, 1, 1], "finite"),
    ],
    ids=["all-positive", "all-negative", "shape-mismatch", "non-binary", "nan-score"],
)
def test_auc_rejects(scores: list, labels: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        auc(np.array(scores, dtype=float), np.array(labels))


_L3 = np.log2(3.0)


@pytest.mark.parametrize(
    ("scores", "gains", "k", "expected"),
    [
        ([[3, 2, 1]], [[3, 2, 1]], 10, 1.0),
        ([[1, 2, 3]], [[3, 2, 0]], 10, (2 / _L3 + 3 / 2) / (3 + 2 / _L3)),
        ([[0.2, 0.9, 0.5]], [[1, 0, 1]], 1, 0.0),
        ([[0.2, 0.9, 0.5]], [[1, 0, 1]], 2, (1 / _L3) / (1 + 1 / _L3)),
        ([[1, 1]], [[0, 1]], 1, 0.0),
        ([[1, 1]], [[1, 0]], 1, 1.0),
        ([[2, 1], [1, 2]], [[1, 0], [1, 0]], 2, (1 + 1 / _L3) / 2),
        ([[1, 2], [1, 2]], [[0, 0], [0, 1]], 2, 1.0),
        ([[0.5, 0.1, 0.9, 0.3]], [[0.2, 0.0, 0.8, 0.4]], 3, (0.8 + 0.2 / _L3 + 0.4 / 2) / (0.8 + 0.4 / _L3 + 0.2 / 2)),
    ],
    ids=[
        "perfect",
        "reversed",
        "k1-miss",
        "k2-hand",
        "tie-lower-index-first-miss",
        "tie-lower-index-first-hit",
        "mean-over-requests",
        "zero-gain-request-skipped",
        "graded-gains",
    ],
)
def test_ndcg_at_k(scores: list, gains: list, k: int, expected: float) -> None:
    got = ndcg_at_k(np.array(scores, dtype=float), np.array(gains, dtype=float), k=k)
    assert got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("scores", "gains", "k", "match"),
    [
        ([1, 2], [1, 0], 10, r"\(R, n\)"),
        ([[1, 2]], [[1, 0, 0]], 10, r"\(R, n\)"),
        ([[1, 2]], [[1, -1]], 10, ">= 0"),
        ([[1, 2]], [[1, 0]], 0, "k must"),
        ([[1, 2]], [[0, 0]], 10, "zero gains"),
    ],
    ids=["1d", "shape-mismatch", "negative-gain", "k-zero", "all-zero-gains"],
)
def test_ndcg_rejects(scores: list, gains: list, k: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ndcg_at_k(np.array(scores, dtype=float), np.array(gains, dtype=float), k=k)


def test_ndcg_oracle_beats_popularity(small: tuple[World, Requests, ClickComponents]) -> None:
    world = small[0]
    ev = world.eval_requests()
    oracle = ndcg_at_k(ev.relevance, ev.relevance)
    pop = ndcg_at_k(world.popularity[ev.candidate_ids], ev.relevance)
    rand = ndcg_at_k(np.random.default_rng(0).random(ev.relevance.shape), ev.relevance)
    assert oracle == pytest.approx(1.0)
    assert oracle > pop > rand
