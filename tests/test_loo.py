"""The leave-one-out protocol (export/loo.py), its metrics (export/metrics.py) and the baselines."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from export.baselines import CooccurrenceConfig, cooccurrence_counts, fit_baselines, item_counts
from export.loo import leave_one_out, make_case
from export.metrics import loo_metrics, paired_bootstrap, per_user_metrics, target_metrics
from export.movielens import load_ml100k, ml100k_dir
from tests.test_movielens import write_ml100k

# user 1: 1 5 2 3 (time order); user 2: 2 4 1
INTER = [(1, 3, 4, 300), (1, 1, 5, 100), (2, 4, 1, 50), (1, 5, 2, 200), (1, 2, 3, 200), (2, 2, 4, 40), (2, 1, 3, 60)]


@pytest.fixture
def data(tmp_path: Path):
    return load_ml100k(write_ml100k(tmp_path, inter=INTER))


def test_split_last_is_test_second_last_is_validation(data) -> None:
    split = leave_one_out(data)
    assert [s.tolist() for s in split.train] == [[1, 5], [2]]
    assert [c.target for c in split.test] == [3, 1]
    assert [c.target for c in split.valid] == [2, 4]
    assert [c.history_ids.tolist() for c in split.test] == [[1, 5, 2], [2, 4]]
    assert [c.history_ids.tolist() for c in split.valid] == [[1, 5], [2]]


def test_candidates_are_unseen_items_plus_target(data) -> None:
    split = leave_one_out(data)
    # user 1 saw 1, 5, 2 before its test target 3: candidates 3 and 4
    assert split.test[0].candidate_ids.tolist() == [3, 4]
    assert split.test[0].target_index == 0
    assert split.valid[0].candidate_ids.tolist() == [2, 3, 4]
    np.testing.assert_array_equal(split.test[0].candidate_features, data.features_of(np.array([3, 4])))


def test_a_target_seen_before_stays_a_candidate(tmp_path: Path) -> None:
    data = load_ml100k(write_ml100k(tmp_path, inter=[(1, 1, 4, 1), (1, 2, 4, 2), (1, 1, 4, 3)]))
    case = make_case(data, 0, 2)
    assert case.target == 1 and case.candidate_ids.tolist() == [1, 3, 4, 5]


def test_history_keeps_the_most_recent(data) -> None:
    case = make_case(data, 0, 3, history_max=2)
    assert case.history_ids.tolist() == [5, 2]


def test_no_target_leaks_into_training_on_the_real_data() -> None:
    data = load_ml100k(ml100k_dir())
    split = leave_one_out(data)
    counts = np.diff(data.seq_start)
    assert len(split.test) == len(split.valid) == 943
    for case, valid, train in zip(split.test, split.valid, split.train):
        seq = data.sequence(case.user_row)
        assert train.size == counts[case.user_row] - 2
        np.testing.assert_array_equal(train, seq[:-2])  # the training part is a strict prefix
        assert case.target == seq[-1] and valid.target == seq[-2]
        assert case.history_ids[-1] == valid.target and case.history_ids.size == min(200, seq.size - 1)
        # candidates: exactly the items not seen before the target, the target among them
        assert not np.isin(case.candidate_ids, case.history_ids[case.history_ids != case.target]).any()
        assert case.candidate_ids.size == data.items.size - np.setdiff1d(seq[:-1], [case.target]).size
    sizes = [c.candidate_ids.size for c in split.test]
    assert max(sizes) <= 4096


@pytest.mark.parametrize(
    ("scores", "target", "want"),
    [
        # rank 1
        ([0.9, 0.1, 0.2], 0, {"hr10": 1.0, "ndcg10": 1.0, "mrr": 1.0}),
        # rank 3: NDCG = 1/log2(4) = 0.5, RR = 1/3
        ([0.1, 0.9, 0.5, 0.05], 0, {"hr10": 1.0, "ndcg10": 0.5, "mrr": 1 / 3}),
        # tie with one other at the top: rank 1 or 2, each half
        ([0.5, 0.5, 0.1], 1, {"hr10": 1.0, "ndcg10": (1 + 1 / math.log2(3)) / 2, "mrr": 0.75}),
    ],
    ids=["first", "third", "tie"],
)
def test_target_metrics_hand_computed(scores: list[float], target: int, want: dict[str, float]) -> None:
    got = target_metrics(np.array(scores), target)
    for key, value in want.items():
        assert got[key] == pytest.approx(value)


def test_cutoffs_hand_computed() -> None:
    scores = np.arange(100, 0, -1, dtype=np.float64)  # candidate i has rank i + 1
    at_11 = target_metrics(scores, 10)  # rank 11: out of the top 10, inside the top 50
    assert (at_11["hr10"], at_11["ndcg10"], at_11["hr50"]) == (0.0, 0.0, 1.0)
    assert at_11["ndcg50"] == pytest.approx(1 / math.log2(12)) and at_11["mrr"] == pytest.approx(1 / 11)
    at_60 = target_metrics(scores, 59)
    assert (at_60["hr50"], at_60["ndcg50"]) == (0.0, 0.0)
    # a constant scorer over 20 candidates: rank uniform on 1..20
    flat = target_metrics(np.zeros(20), 7)
    assert flat["hr10"] == pytest.approx(0.5)
    assert flat["mrr"] == pytest.approx(np.mean(1 / np.arange(1, 21)))


def test_loo_metrics_averages_users() -> None:
    got = loo_metrics([np.array([0.9, 0.1]), np.array([0.1, 0.2, 0.3])], [0, 0])
    assert got["mrr"] == pytest.approx((1 + 1 / 3) / 2)
    assert got["ndcg10"] == pytest.approx((1 + 0.5) / 2)


@pytest.mark.parametrize(
    ("scores", "target", "match"),
    [([0.1, float("nan")], 0, "finite"), ([0.1, 0.2], 2, "target_index"), ([[0.1]], 0, "scores \\(N,\\)")],
    ids=["nan", "index", "shape"],
)
def test_target_metrics_rejects(scores: list, target: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        target_metrics(np.array(scores), target)


def test_baselines_on_hand_counts(data) -> None:
    split = leave_one_out(data)  # train: [1, 5], [2]
    n_ids = data.cardinalities["item_id"]
    assert item_counts(split.train, n_ids).tolist() == [0, 1, 1, 0, 0, 1]
    c = cooccurrence_counts([np.array([1, 5, 2, 3])], n_ids, window=2)
    assert (c[1, 5], c[1, 2], c[1, 3], c[5, 2], c[5, 3], c[2, 3], c[5, 1]) == (1, 1, 0, 1, 1, 1, 0)
    scorers = fit_baselines([np.array([1, 5, 2, 3]), np.array([4, 3])], n_ids, CooccurrenceConfig(window=1, recent=2))
    case = make_case(data, 0, 3)  # history 1 5 2, candidates 3, 4
    # 3 follows 2 once (latest history item, weight 1); popularity prior 2/3 and 1/3
    np.testing.assert_allclose(scorers["cooccurrence"](case), [1 + 2 / 3, 1 / 3])
    np.testing.assert_array_equal(scorers["popularity"](case), [2, 1])
    np.testing.assert_array_equal(scorers["random"](case), scorers["random"](case))


def test_training_examples_come_from_the_training_part_only() -> None:
    from export.next_item import draw_negatives, example_requests, positions

    data = load_ml100k(ml100k_dir())
    split = leave_one_out(data, history_max=50)
    pos = positions(split)
    assert len(pos) == sum(max(s.size - 1, 0) for s in split.train)
    counts = np.diff(data.seq_start)
    assert (pos[:, 1] < counts[pos[:, 0]] - 2).all()  # never the validation (T-2) or test (T-1) position
    rng = np.random.default_rng(0)
    batch = pos[rng.integers(len(pos), size=256)]
    positive = np.array([split.train[r][t] for r, t in batch])
    negatives = draw_negatives(rng, data.items, positive, 31)
    assert not (negatives == positive[:, None]).any()
    req = example_requests(data, split, batch, negatives, 50)
    for i, (row, t) in enumerate(batch):
        seq = data.sequence(row)
        np.testing.assert_array_equal(req.history_ids[i, : req.history_len[i]], seq[max(0, t - 50) : t])
        assert req.candidate_ids[i, 0] == seq[t] and req.labels[i, 0] == 1 and not req.labels[i, 1:].any()


def test_unseen_negatives_avoid_history_and_positive() -> None:
    """Full ranking never puts an item the user saw before the target among its candidates: the
    negatives a training example draws follow the same rule."""
    from export.next_item import draw_unseen_negatives, positions

    data = load_ml100k(ml100k_dir())
    split = leave_one_out(data, history_max=50)
    pos = positions(split)
    rng = np.random.default_rng(1)
    batch = pos[np.argsort(-pos[:, 1])[:64]]  # the longest histories: most items to avoid
    negatives = draw_unseen_negatives(rng, data.items, split, batch, 127)
    assert negatives.shape == (64, 127) and np.isin(negatives, data.items).all()
    for i, (row, t) in enumerate(batch):
        assert not np.isin(negatives[i], split.train[row][: t + 1]).any()


def test_pmi_vectors_put_co_occurring_items_together() -> None:
    from export.next_item import pmi_vectors

    # 1, 2, 3 occur within two positions of each other, 4, 5, 6 likewise; the groups never meet;
    # 7 never occurs (nor id 0).
    train = [np.array([1, 2, 3, 1, 2, 3]), np.array([4, 5, 6, 4, 5, 6]), np.array([3, 2, 1]), np.array([6, 5, 4])]
    v = pmi_vectors(train, 8, window=2, dim=2)
    assert v.shape == (8, 2) and np.isfinite(v).all()
    assert not v[7].any() and not v[0].any()

    def cos(a: int, b: int) -> float:
        return float(v[a] @ v[b] / np.linalg.norm(v[a]) / np.linalg.norm(v[b]))

    assert min(cos(1, 2), cos(1, 3), cos(4, 5), cos(5, 6)) > 0.95
    assert max(abs(cos(a, b)) for a in (1, 2, 3) for b in (4, 5, 6)) < 0.05


def test_item_rows_start_from_the_given_vectors() -> None:
    import torch

    from export.ml100k import PRESETS
    from export.next_item import build_model, init_item_rows
    from serving.contract import ITEM_FEATURE

    data = load_ml100k(ml100k_dir())
    model = build_model(PRESETS["ml-100k-tiny"], data.cardinalities)
    dim = model.embedding.dim
    vectors = np.random.default_rng(0).normal(size=(int(data.items.max()) + 1, dim))
    before = model.embedding.table.detach().clone()
    init_item_rows(model, data.items, vectors, std=0.05)
    rows = model.embedding.rows(torch.from_numpy(data.items)[:, None], (ITEM_FEATURE,))[:, 0]
    got = model.embedding.table.detach()[rows].numpy()
    np.testing.assert_allclose(got.std(), 0.05, rtol=1e-3)
    np.testing.assert_allclose(got / got.std(), vectors[data.items] / vectors[data.items].std(), rtol=1e-4, atol=1e-5)
    untouched = np.setdiff1d(np.arange(before.shape[0]), rows.numpy())
    assert untouched.size and torch.equal(model.embedding.table.detach()[untouched], before[untouched])


def test_per_user_metrics_and_their_means() -> None:
    scores, targets = [np.array([0.9, 0.1]), np.array([0.1, 0.2, 0.3])], [0, 0]
    per = per_user_metrics(scores, targets)
    np.testing.assert_allclose(per["mrr"], [1.0, 1 / 3])
    assert loo_metrics(scores, targets) == {k: pytest.approx(float(v.mean())) for k, v in per.items()}


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(3)
    b = rng.random(500)
    clear = paired_bootstrap(b + 0.1, b)  # the same users, a constant gain: no doubt at all
    assert clear["diff"] == pytest.approx(0.1) and clear["ci95_low"] == pytest.approx(0.1)
    assert clear["p_not_above"] == 0.0
    noise = paired_bootstrap(rng.random(500), b)  # unrelated: the interval straddles the difference
    assert noise["ci95_low"] < noise["diff"] < noise["ci95_high"] and noise["ci95_high"] - noise["ci95_low"] > 0.02
    with pytest.raises(ValueError, match="equal"):
        paired_bootstrap(b, b[:3])
