"""The MovieLens-1M loader (export/movielens.py) on small files in the real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.config import WorldConfig, cardinalities
from export.movielens import load_movielens
from serving import contract as signature

MOVIES = [
    (1, "Toy Story (1995)", "Animation|Children's|Comedy"),
    (2, "Jumanji (1995)", "Adventure|Children's|Fantasy"),
    (3, "Cité des enfants perdus, La (City of Lost Children, The) (1995)", "Adventure|Sci-Fi"),
    (4, "Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)", "Horror"),
    (5, "Matrix, The (1999)", "Action|Sci-Fi|Thriller"),
    (6, "Untitled", "Drama"),
    (7, "Heat (1995)", "Action|Crime|Thriller"),
    (8, "Sabrina (1995)", "Comedy|Romance"),
    (9, "Casablanca (1942)", "Drama|Romance|War"),
    (10, "GoldenEye (1995)", "Action|Adventure|Thriller"),
    (11, "Fargo (1996)", "Crime|Drama|Thriller"),
    (12, "Être et avoir (2000)", "Documentary"),
]
# (user, movie, rating, timestamp), deliberately not in time order.
RATINGS = [
    (1, 5, 5, 978300760),
    (1, 1, 3, 978300100),
    (1, 3, 4, 978300500),
    (1, 7, 2, 978300900),
    (1, 9, 5, 978300200),
    (1, 10, 4, 978301000),
    (2, 4, 1, 978500000),
    (2, 2, 5, 978400000),
    (2, 11, 4, 978450000),
    (3, 6, 4, 978600000),  # a single rating: no candidate, user skipped
    (10, 12, 5, 978700002),
    (10, 8, 3, 978700001),
    (10, 1, 4, 978700003),
    (10, 5, 2, 978700003),  # same timestamp as movie 1: ties break by movie id
]
GENRES = sorted({g for _, _, gs in MOVIES for g in gs.split("|")})


def _write(tmp_path: Path, movies: list[str] | None = None, ratings: list[str] | None = None) -> tuple[Path, Path]:
    movies = movies if movies is not None else [f"{m}::{t}::{g}" for m, t, g in MOVIES]
    ratings = ratings if ratings is not None else ["::".join(map(str, r)) for r in RATINGS]
    mp, rp = tmp_path / "movies.dat", tmp_path / "ratings.dat"
    mp.write_bytes(("\n".join(movies) + "\n").encode("latin-1"))
    rp.write_bytes(("\n".join(ratings) + "\n").encode("latin-1"))
    return rp, mp


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return _write(tmp_path)


def _by_user() -> dict[int, list[tuple[int, int, int]]]:
    """user -> [(timestamp, movie, rating)] sorted by time then movie."""
    out: dict[int, list[tuple[int, int, int]]] = {}
    for u, m, r, t in RATINGS:
        out.setdefault(u, []).append((t, m, r))
    return {u: sorted(v) for u, v in out.items()}


def test_shapes_dtypes_and_ranges(files: tuple[Path, Path]) -> None:
    req, cards = load_movielens(*files, history_len=3, n_candidates=6)
    assert len(req) == 3  # users 1, 2, 10; user 3 has one rating
    np.testing.assert_array_equal(req.user_features[:, 0], [1, 2, 10])
    assert (req.user_features[:, 1:] == 0).all()
    np.testing.assert_array_equal(req.history_len, [3, 2, 3])  # min(history_len, n_ratings - 1)
    assert req.history_ids.shape == (3, 3)
    assert req.candidate_ids.shape == (3, 6)
    assert req.candidate_features.shape == (3, 6, signature.F_C)
    assert req.labels.shape == req.relevance.shape == (3, 6)
    for name in ("user_features", "history_ids", "history_len", "candidate_ids", "candidate_features"):
        assert getattr(req, name).dtype == np.int64, name
    assert req.labels.dtype == req.relevance.dtype == np.float32

    assert set(cards) == set(cardinalities(WorldConfig()))
    assert cards == {
        "user_id": 11,
        "age_bucket": 1,
        "region": 1,
        "device": 1,
        "item_id": 13,
        "category": len(GENRES),
        "creator_id": 1 + (2000 - 1922) // 5 + 1,
        "price_bucket": 10,
    }
    for j, feat in enumerate(signature.USER_FEATURES):
        assert 0 <= req.user_features[:, j].min() and req.user_features[:, j].max() < cards[feat]
    for j, feat in enumerate(signature.CANDIDATE_FEATURES):
        col = req.candidate_features[..., j]
        assert 0 <= col.min() and col.max() < cards[feat], feat
    assert req.candidate_ids.min() >= 1 and req.candidate_ids.max() < cards["item_id"]
    padding = np.arange(3)[None, :] >= req.history_len[:, None]
    assert (req.history_ids[padding] == 0).all()


def test_time_order_and_label_semantics(files: tuple[Path, Path]) -> None:
    req, _ = load_movielens(*files, history_len=3, n_candidates=6, max_rated_candidates=3)
    by_user = _by_user()
    for row in range(len(req)):
        user = int(req.user_features[row, 0])
        timeline = by_user[user]
        h = int(req.history_len[row])
        # History: the first h rated movies, oldest first.
        assert req.history_ids[row, :h].tolist() == [m for _, m, _ in timeline[:h]]
        # Rated candidates: exactly the next (up to 3) movies in time, with their ratings.
        expected_next = {m: r for _, m, r in timeline[h : h + 3]}
        rated_by_user = {m for _, m, _ in timeline}
        cands = req.candidate_ids[row].tolist()
        assert len(set(cands)) == len(cands), "candidates repeat"
        assert {m for m in cands if m in rated_by_user} == set(expected_next)
        for j, m in enumerate(cands):
            if m in expected_next:
                assert req.labels[row, j] == float(expected_next[m] >= 4)
                assert req.relevance[row, j] == pytest.approx(expected_next[m] / 5)
            else:
                assert m not in rated_by_user
                assert req.labels[row, j] == 0 and req.relevance[row, j] == 0
        history_times = [t for t, _, _ in timeline[:h]]
        candidate_times = [t for t, m, _ in timeline if m in expected_next]
        assert max(history_times) <= min(candidate_times)

    # user 10: movies 1 and 5 share a timestamp; the tie breaks by movie id.
    row = int(np.flatnonzero(req.user_features[:, 0] == 10)[0])
    assert req.history_ids[row].tolist() == [8, 12, 1]


def test_candidate_features(files: tuple[Path, Path]) -> None:
    # history 1 and up to 5 rated candidates: every movie is some user's candidate.
    req, _ = load_movielens(*files, history_len=1, n_candidates=11, max_rated_candidates=5)
    feats = {int(m): f.tolist() for m, f in zip(req.candidate_ids.ravel(), req.candidate_features.reshape(-1, 3))}
    assert set(feats) == {m for m, _, _ in MOVIES}
    for m, _, genres in MOVIES:
        assert feats[m][0] == GENRES.index(genres.split("|")[0]), m
    assert feats[3][0] == GENRES.index("Adventure")  # the latin-1 title parsed
    assert feats[4][1] == 1  # 1922, the earliest year
    assert feats[6][1] == 0  # no year in the title
    assert feats[12][1] == 1 + (2000 - 1922) // 5
    assert feats[1][1] == feats[10][1] == 1 + (1995 - 1922) // 5
    # Popularity decile: movies 1 and 5 have 2 ratings, all others 1.
    assert feats[1][2] == feats[5][2] == 9
    assert all(f[2] == 0 for m, f in feats.items() if m not in (1, 5))


def test_deterministic_in_seed(files: tuple[Path, Path]) -> None:
    a, _ = load_movielens(*files, history_len=2, n_candidates=8, seed=1)
    b, _ = load_movielens(*files, history_len=2, n_candidates=8, seed=1)
    c, _ = load_movielens(*files, history_len=2, n_candidates=8, seed=2)
    np.testing.assert_array_equal(a.candidate_ids, b.candidate_ids)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.candidate_ids, c.candidate_ids)


def test_blank_and_whitespace_lines_are_skipped(tmp_path: Path) -> None:
    ratings = ["::".join(map(str, r)) for r in RATINGS]
    ratings[3:3] = ["", "   "]
    req, _ = load_movielens(*_write(tmp_path, ratings=ratings), history_len=3, n_candidates=6)
    (tmp_path / "ref").mkdir()
    ref, _ = load_movielens(*_write(tmp_path / "ref"), history_len=3, n_candidates=6)
    np.testing.assert_array_equal(req.history_ids, ref.history_ids)


@pytest.mark.parametrize(
    ("which", "line", "match"),
    [
        ("ratings", "1::5::5", r"ratings\.dat:3: expected UserID::MovieID::Rating::Timestamp"),
        ("ratings", "1::5::five::978300760", r"ratings\.dat:3: Rating must be an integer"),
        ("ratings", "1::99::4::978300760", r"ratings\.dat:3: MovieID is not in .*movies\.dat"),
        ("ratings", "1::5::6::978300760", r"ratings\.dat:3: Rating must lie in 1\.\.5"),
        ("movies", "2::Jumanji (1995)", r"movies\.dat:3: expected MovieID::Title::Genres"),
        ("movies", "x::Jumanji (1995)::Comedy", r"movies\.dat:3: MovieID must be an integer"),
    ],
    ids=[
        "ratings-3-fields",
        "ratings-text-rating",
        "ratings-unknown-movie",
        "ratings-rating-6",
        "movies-2-fields",
        "movies-text-id",
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path: Path, which: str, line: str, match: str) -> None:
    movies = [f"{m}::{t}::{g}" for m, t, g in MOVIES]
    ratings = ["::".join(map(str, r)) for r in RATINGS]
    target = ratings if which == "ratings" else movies
    target[2] = line
    with pytest.raises(ValueError, match=match):
        load_movielens(*_write(tmp_path, movies=movies, ratings=ratings), history_len=3, n_candidates=6)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"history_len": 0, "n_candidates": 6}, "history_len"),
        ({"history_len": signature.L_MAX + 1, "n_candidates": 6}, "history_len"),
        ({"history_len": 3, "n_candidates": 0}, "n_candidates"),
        ({"history_len": 3, "n_candidates": 6, "max_rated_candidates": 7}, "max_rated_candidates"),
        ({"history_len": 3, "n_candidates": 12}, "rated too many"),
    ],
    ids=["history-0", "history-above-L_MAX", "no-candidates", "rated-above-n", "catalogue-too-small"],
)
def test_bad_arguments(files: tuple[Path, Path], kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_movielens(*files, **kwargs)
