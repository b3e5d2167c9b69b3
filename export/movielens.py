"""Load MovieLens-1M (``ratings.dat`` + ``movies.dat``) into ranking ``Requests``.

Nothing is downloaded: pass the paths of the unpacked files. Formats (latin-1):

    ratings.dat   UserID::MovieID::Rating::Timestamp      (~1M lines, 6040 users)
    movies.dat    MovieID::Title (Year)::Genre1|Genre2|...  (3883 movies)

One request per user with at least 2 ratings, built from the user's ratings sorted by
time (ties by movie id): the first ``min(history_len, n_ratings - 1)`` are the history;
the next (up to ``max_rated_candidates``) rated movies are candidates, labelled
``rating >= 4`` with relevance ``rating / 5``; movies the user never rated, sampled
uniformly without repeats, fill up to ``n_candidates`` with label and relevance 0.
Candidate order is shuffled per request.

Feature slots (same as the synthetic world, export/world.py):

* ids are the raw MovieLens ids (0 is never a real user or movie, so padding is unambiguous);
* ``user_features`` = [user_id, 0, 0, 0]: ML-1M's users.dat demographics are not read,
  so age_bucket, region and device are unknown and constant 0 (cardinality 1);
* ``category`` = index of the movie's first listed genre in the sorted genre vocabulary;
* ``creator_id`` stands in for the release period: 1 + (year - earliest year) // 5, from the
  "(YYYY)" at the end of the title, 0 if the title has none;
* ``price_bucket`` = popularity decile (0..9) of the movie's rating count over the whole
  file (a global prior, so it includes the ratings that are later used as labels).

For ML-1M the load takes ~1-2 s (vectorised; only malformed input is re-scanned line by line).
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np

from export.world import Requests
from serving import contract

logger = logging.getLogger(__name__)

POSITIVE_RATING = 4  # label = rating >= POSITIVE_RATING
MAX_RATING = 5
YEAR_BUCKET_YEARS = 5
N_POPULARITY_BUCKETS = 10
_YEAR_RE = re.compile(r"\((\d{4})\)\s*$")
_SAMPLING_ROUNDS = 50


def _nonblank_line_number(lines: list[str], row: int) -> int:
    """1-based line number of the ``row``-th (0-based) non-blank line."""
    seen = -1
    for lineno, line in enumerate(lines, 1):
        if line.strip():
            seen += 1
            if seen == row:
                return lineno
    return len(lines)


def _read_movies(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Movie ids (sorted), first-genre index, year bucket (0 = unknown) and the genre vocabulary."""
    ids: list[int] = []
    titles: list[str] = []
    genres: list[list[str]] = []
    for lineno, line in enumerate(path.read_text(encoding="latin-1").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 3:
            raise ValueError(f"{path}:{lineno}: expected MovieID::Title::Genres, got {line!r}")
        try:
            movie_id = int(parts[0])
        except ValueError:
            raise ValueError(f"{path}:{lineno}: MovieID must be an integer, got {parts[0]!r}") from None
        if movie_id < 1:
            raise ValueError(f"{path}:{lineno}: MovieID must be >= 1, got {movie_id}")
        g = [x.strip() for x in parts[2].split("|")]
        if not all(g):
            raise ValueError(f"{path}:{lineno}: empty genre in {parts[2]!r}")
        ids.append(movie_id)
        titles.append(parts[1])
        genres.append(g)
    if not ids:
        raise ValueError(f"{path}: no movies")
    id_arr = np.asarray(ids, dtype=np.int64)
    uniq, counts = np.unique(id_arr, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: duplicate MovieID {int(uniq[counts > 1][0])}")

    vocab = sorted({x for g in genres for x in g})
    genre_index = {name: i for i, name in enumerate(vocab)}
    first_genre = np.asarray([genre_index[g[0]] for g in genres], dtype=np.int64)
    years = np.asarray([int(m.group(1)) if (m := _YEAR_RE.search(t)) else -1 for t in titles], dtype=np.int64)
    known = years >= 0
    year_bucket = np.zeros_like(years)
    if known.any():
        year_bucket[known] = 1 + (years[known] - years[known].min()) // YEAR_BUCKET_YEARS
    order = np.argsort(id_arr)
    return id_arr[order], first_genre[order], year_bucket[order], vocab


def _read_ratings(path: Path, movie_ids: np.ndarray, movies_path: Path) -> np.ndarray:
    """(M, 4) int64 [user, movie, rating, timestamp]; ValueError naming file and line when malformed."""
    text = path.read_text(encoding="latin-1")
    if not text.strip():
        raise ValueError(f"{path}: no ratings")
    try:
        data = np.loadtxt(io.StringIO(text.replace("::", "\t")), delimiter="\t", dtype=np.int64, ndmin=2, comments=None)
        if data.shape[1] != 4:
            raise ValueError(f"expected 4 fields, got {data.shape[1]}")
    except ValueError:
        data = _parse_ratings_slowly(path, text.splitlines())
    checks = (
        (data[:, 0] < 1, "UserID must be >= 1"),
        (~np.isin(data[:, 1], movie_ids), f"MovieID is not in {movies_path}"),
        ((data[:, 2] < 1) | (data[:, 2] > MAX_RATING), f"Rating must lie in 1..{MAX_RATING}"),
        (data[:, 3] < 0, "Timestamp must be >= 0"),
    )
    for bad, what in checks:
        if bad.any():
            row = int(np.argmax(bad))
            lineno = _nonblank_line_number(text.splitlines(), row)
            raise ValueError(f"{path}:{lineno}: {what}, got {data[row].tolist()}")
    return data


def _parse_ratings_slowly(path: Path, lines: list[str]) -> np.ndarray:
    """Line-by-line parse, used only when the fast parse fails: names the first bad line, or
    succeeds for well-formed files that the fast parser rejects (e.g. whitespace-only lines)."""
    rows: list[list[int]] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split("::")
        if len(parts) != 4:
            raise ValueError(f"{path}:{lineno}: expected UserID::MovieID::Rating::Timestamp, got {line!r}")
        row = []
        for name, value in zip(("UserID", "MovieID", "Rating", "Timestamp"), parts):
            try:
                row.append(int(value))
            except ValueError:
                raise ValueError(f"{path}:{lineno}: {name} must be an integer, got {value!r}") from None
        rows.append(row)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 4)


def _popularity_bucket(counts: np.ndarray) -> np.ndarray:
    edges = np.quantile(counts, np.linspace(0, 1, N_POPULARITY_BUCKETS + 1)[1:-1])
    return np.searchsorted(edges, counts, side="left").astype(np.int64)


def _fill_unrated(
    rng: np.random.Generator,
    cand: np.ndarray,
    fill: np.ndarray,
    user_row: np.ndarray,
    rated_keys: np.ndarray,
    movie_ids: np.ndarray,
    key_base: int,
) -> None:
    """Set ``cand[fill]`` to movies that row's user never rated, no repeats within a row (in place)."""

    def conflicts() -> np.ndarray:
        keys = user_row[:, None] * key_base + cand
        pos = np.minimum(np.searchsorted(rated_keys, keys), rated_keys.size - 1)
        rated = rated_keys[pos] == keys
        order = np.argsort(cand, axis=1, kind="stable")
        srt = np.take_along_axis(cand, order, axis=1)
        dup_sorted = np.zeros_like(rated)
        dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
        dup = np.zeros_like(rated)
        np.put_along_axis(dup, order, dup_sorted, axis=1)
        return (rated | dup) & fill

    todo = fill.copy()
    for _ in range(_SAMPLING_ROUNDS):
        if not todo.any():
            return
        cand[todo] = movie_ids[rng.integers(movie_ids.size, size=int(todo.sum()))]
        todo = conflicts()
    # Users who rated most of the catalogue: draw their remaining slots exactly.
    for row in np.flatnonzero(todo.any(axis=1)):
        keep = ~todo[row]
        taken = np.union1d(rated_keys[(rated_keys // key_base) == user_row[row]] % key_base, cand[row, keep])
        free = np.setdiff1d(movie_ids, taken)
        cand[row, todo[row]] = rng.choice(free, size=int(todo[row].sum()), replace=False)


def load_movielens(
    ratings_path: str | Path,
    movies_path: str | Path,
    history_len: int,
    n_candidates: int,
    seed: int = 0,
    *,
    max_rated_candidates: int | None = None,
) -> tuple[Requests, dict[str, int]]:
    """One ranking request per user (see the module docstring) and the feature cardinalities.

    ``max_rated_candidates`` (default ``n_candidates // 2``, at least 1) caps the rated
    (next-in-time) candidates per request; sampling of unrated movies and the candidate
    shuffle are deterministic in ``seed``. The cardinalities dict has the keys of
    ``export.config.cardinalities`` and is sized to the data (max raw id + 1 for ids).
    """
    ratings_path, movies_path = Path(ratings_path), Path(movies_path)
    if not 1 <= history_len <= contract.L_MAX:
        raise ValueError(f"history_len must lie in 1..{contract.L_MAX}, got {history_len}")
    if not 1 <= n_candidates <= contract.N_MAX:
        raise ValueError(f"n_candidates must lie in 1..{contract.N_MAX}, got {n_candidates}")
    max_rated = max(1, n_candidates // 2) if max_rated_candidates is None else max_rated_candidates
    if not 1 <= max_rated <= n_candidates:
        raise ValueError(f"max_rated_candidates must lie in 1..{n_candidates}, got {max_rated}")

    movie_ids, first_genre, year_bucket, genres = _read_movies(movies_path)
    data = _read_ratings(ratings_path, movie_ids, movies_path)
    user, movie, rating, ts = data.T

    key_base = int(movie_ids.max()) + 1
    n_ratings = np.bincount(movie, minlength=key_base)
    feature_table = np.zeros((key_base, contract.F_C), dtype=np.int64)
    feature_table[movie_ids] = np.stack([first_genre, year_bucket, _popularity_bucket(n_ratings[movie_ids])], axis=1)

    order = np.lexsort((movie, ts, user))
    user, movie, rating = user[order], movie[order], rating[order]
    users, starts, counts = np.unique(user, return_index=True, return_counts=True)
    keep = counts >= 2
    if not keep.any():
        raise ValueError(f"{ratings_path}: no user has the 2 ratings needed for a history and a candidate")
    if (~keep).any():
        logger.info("movielens: skipping %d users with a single rating", int((~keep).sum()))
    user_row = np.searchsorted(users, user)  # rated_keys index users by row in `users`
    rated_keys = np.sort(user_row * key_base + movie)
    rows = np.flatnonzero(keep)
    users, starts, counts = users[rows], starts[rows], counts[rows]

    h = np.minimum(history_len, counts - 1)
    n_rated = np.minimum(counts - h, max_rated)
    short = movie_ids.size - counts < n_candidates - n_rated
    if short.any():
        u = int(users[np.argmax(short)])
        raise ValueError(
            f"user {u} has rated too many of the {movie_ids.size} movies to fill {n_candidates} candidates"
        )

    r = users.size
    l_pad = int(h.max())
    col = np.arange(l_pad)[None, :]
    in_hist = col < h[:, None]
    hist_idx = np.where(in_hist, starts[:, None] + col, 0)
    history_ids = np.where(in_hist, movie[hist_idx], 0)

    col = np.arange(n_candidates)[None, :]
    is_rated = col < n_rated[:, None]
    cand_idx = np.where(is_rated, (starts + h)[:, None] + col, 0)
    cand = np.where(is_rated, movie[cand_idx], 0)
    cand_rating = np.where(is_rated, rating[cand_idx], 0)

    rng = np.random.default_rng(seed)
    _fill_unrated(rng, cand, ~is_rated, rows, rated_keys, movie_ids, key_base)
    perm = np.argsort(rng.random(cand.shape), axis=1)
    cand = np.take_along_axis(cand, perm, axis=1)
    cand_rating = np.take_along_axis(cand_rating, perm, axis=1)

    requests = Requests(
        user_features=np.stack([users, *(np.zeros_like(users),) * (contract.F_U - 1)], axis=1).astype(np.int64),
        history_ids=history_ids.astype(np.int64),
        history_len=h.astype(np.int64),
        candidate_ids=cand.astype(np.int64),
        candidate_features=feature_table[cand],
        labels=(cand_rating >= POSITIVE_RATING).astype(np.float32),
        relevance=(cand_rating / MAX_RATING).astype(np.float32),
    )
    cards = {
        "user_id": int(users.max()) + 1,
        "age_bucket": 1,
        "region": 1,
        "device": 1,
        "item_id": key_base,
        "category": len(genres),
        "creator_id": int(year_bucket.max()) + 1,
        "price_bucket": N_POPULARITY_BUCKETS,
    }
    logger.info(
        "movielens: %d requests, history <= %d, %d candidates, %d movies, %d genres",
        r,
        l_pad,
        n_candidates,
        movie_ids.size,
        len(genres),
    )
    return requests, cards
