"""Load MovieLens-100k (RecBole's atomic files) into the project's structures.

    from export.movielens import load_ml100k, ml100k_dir
    data = load_ml100k(ml100k_dir())   # the copy inside the pinned recbole==1.2.1 wheel

The data is GroupLens's (https://grouplens.org/datasets/movielens/100k/, their terms apply); it
reaches this machine only inside the ``recbole==1.2.1`` wheel (``pip install --no-deps``,
requirements-data.txt) and is never committed. ``ml100k_dir`` finds it through the wheel's
metadata without importing recbole. Files (tab-separated, a typed header naming the columns):

    ml-100k.inter   user_id:token item_id:token rating:float timestamp:float   (100,000 rows)
    ml-100k.item    item_id:token movie_title:token_seq release_year:token class:token_seq
    ml-100k.user    user_id:token age:token gender:token occupation:token zip_code:token
    ml-100k.link    item_id:token entity_id:token            (item -> Freebase entity, optional)
    ml-100k.kg      head_id:token relation_id:token tail_id:token       (Freebase triples, optional)

Every rating is an interaction (no threshold, no k-core). Each user's interactions are sorted by
timestamp with a *stable* sort, so ties keep the file order (25k (user, timestamp) pairs repeat).

Feature slots (serving/contract.py's names are fixed; each slot is one categorical embedding, so a
field goes to the slot whose meaning is closest, and ids stay raw: the hashing is in the graph):

* ``user_id``      the raw MovieLens user id (1..943).
* ``age_bucket``   age in MovieLens-1M's seven groups (<18, 18-24, 25-34, 35-44, 45-49, 50-55, 56+):
                   the slot's own meaning.
* ``region``       the US ZIP code's first digit (0-9, the national postal zones, which are
                   geographic regions); 10 for a ZIP that does not start with a digit (Canada).
* ``device``       occupation x gender (21 occupations x 2 = 42 values): MovieLens has no device;
                   this is the remaining user context, and a slot with no field would carry a
                   constant.
* ``item_id``      the raw MovieLens item id (1..1682).
* ``category``     the item's rarest genre among its listed ones (counted over the catalogue, ties
                   by list order): the most specific genre ("Animation" over "Comedy"); 19 genres.
* ``creator_id``   the film's director from the Freebase graph shipped beside the data
                   (``film.film.directed_by``, the first listed), numbered 1.. in order of entity
                   id; 0 when the film has no link or no director (92 of the 1,682 films).
* ``price_bucket`` release year in 5-year buckets (1 + (year - earliest) // 5; 0 when unknown):
                   like a price, an ordinal item attribute fixed before any interaction.

No feature is counted from interactions, so no feature can carry a held-out target.
"""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serving import contract

logger = logging.getLogger(__name__)

RECBOLE_DIR = "recbole/dataset_example/ml-100k"
DATASET = "ml-100k"
AGE_EDGES = (18, 25, 35, 45, 50, 56)  # MovieLens-1M's groups: < 18, 18-24, ..., 56+
N_REGIONS = 11  # ZIP zones 0-9 and "not a US ZIP"
YEAR_BUCKET_YEARS = 5
DIRECTED_BY = "film.film.directed_by"


def ml100k_dir() -> Path:
    """The ml-100k folder inside the installed recbole wheel (found via its metadata, not imported)."""
    try:
        dist = importlib.metadata.distribution("recbole")
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(
            "MovieLens-100k comes with the recbole wheel: pip install --no-deps -r requirements-data.txt "
            "(make venv does)"
        ) from None
    path = Path(str(dist.locate_file(RECBOLE_DIR)))
    if not (path / f"{DATASET}.inter").is_file():
        raise FileNotFoundError(f"{path / f'{DATASET}.inter'} is missing from the recbole wheel")
    return path


@dataclass(frozen=True)
class MovieLens:
    """Users, items and every interaction in time order, grouped by user.

    ``items`` and ``users`` are the raw ids, sorted; feature rows follow the same order.
    ``seq_items[seq_start[u]:seq_start[u + 1]]`` is user row u's items, oldest first.
    """

    users: np.ndarray  # (U,) int64 raw user ids, sorted
    user_features: np.ndarray  # (U, F_U) int64 in contract.USER_FEATURES order, user id first
    items: np.ndarray  # (I,) int64 raw item ids, sorted
    item_features: np.ndarray  # (I, F_C) int64 in contract.CANDIDATE_FEATURES order
    titles: tuple[str, ...]  # (I,) "Title (year)"
    seq_items: np.ndarray  # (M,) int64 raw item ids, user by user, each user's in time order
    seq_ratings: np.ndarray  # (M,) float32
    seq_times: np.ndarray  # (M,) int64
    seq_start: np.ndarray  # (U + 1,) int64 offsets into seq_*
    cardinalities: dict[str, int]  # keys of export.config.cardinalities, sized to the data

    def sequence(self, row: int) -> np.ndarray:
        """User row ``row``'s items, oldest first."""
        return self.seq_items[self.seq_start[row] : self.seq_start[row + 1]]

    def features_of(self, item_ids: np.ndarray) -> np.ndarray:
        """(..., F_C) features of raw ``item_ids`` (...,)."""
        return self.item_features[np.searchsorted(self.items, item_ids)]

    def title_of(self, item_id: int) -> str:
        return self.titles[int(np.searchsorted(self.items, item_id))]


def _read_table(path: Path, columns: tuple[str, ...]) -> list[list[str]]:
    """Rows of ``columns`` (header names without their :type) from a RecBole atomic file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty file, expected a header")
    header = [h.split(":", 1)[0] for h in lines[0].split("\t")]
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}: header {lines[0]!r} lacks {missing}")
    index = [header.index(c) for c in columns]
    rows = []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != len(header):
            raise ValueError(f"{path}:{lineno}: expected {len(header)} tab-separated fields, got {len(parts)}")
        rows.append([parts[i] for i in index])
    return rows


def _ints(path: Path, name: str, values: list[str], minimum: int = 1) -> np.ndarray:
    try:
        out = np.asarray([int(float(v)) for v in values], dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"{path}: {name} must be numbers: {e}") from None
    if out.size and out.min() < minimum:
        raise ValueError(f"{path}: {name} must be >= {minimum}, got {int(out.min())}")
    return out


def _unique_ids(path: Path, ids: np.ndarray) -> None:
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"{path}: duplicate id {int(uniq[counts > 1][0])}")


def _directors(directory: Path, items: np.ndarray) -> np.ndarray:
    """(I,) director number per item, 0 = unknown; all 0 when the graph files are absent."""
    link_path, kg_path = directory / f"{DATASET}.link", directory / f"{DATASET}.kg"
    out = np.zeros(items.size, dtype=np.int64)
    if not (link_path.is_file() and kg_path.is_file()):
        logger.info("movielens: no %s / %s: creator_id is 0 for every item", link_path.name, kg_path.name)
        return out
    entity = {e: int(i) for i, e in _read_table(link_path, ("item_id", "entity_id"))}
    director: dict[str, str] = {}
    for head, relation, tail in _read_table(kg_path, ("head_id", "relation_id", "tail_id")):
        if relation == DIRECTED_BY:
            director.setdefault(head, tail)  # the first listed director
    number = {d: i for i, d in enumerate(sorted(set(director.values())), 1)}
    for e, item in entity.items():
        if e in director:
            row = int(np.searchsorted(items, item))
            if row < items.size and items[row] == item:
                out[row] = number[director[e]]
    return out


def _read_items(directory: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], int]:
    path = directory / f"{DATASET}.item"
    rows = _read_table(path, ("item_id", "movie_title", "release_year", "class"))
    if not rows:
        raise ValueError(f"{path}: no items")
    ids = _ints(path, "item_id", [r[0] for r in rows])
    _unique_ids(path, ids)
    genres = [r[3].split() for r in rows]
    if any(not g for g in genres):
        raise ValueError(f"{path}: an item without a genre (class)")
    vocab = sorted({x for g in genres for x in g})
    count = {x: sum(x in g for g in genres) for x in vocab}
    category = np.asarray([vocab.index(min(g, key=lambda x: count[x])) for g in genres], dtype=np.int64)
    years = np.asarray([int(r[2]) if r[2].isdigit() else -1 for r in rows], dtype=np.int64)
    bucket = np.zeros_like(years)
    known = years >= 0
    if known.any():
        bucket[known] = 1 + (years[known] - years[known].min()) // YEAR_BUCKET_YEARS
    titles = [f"{r[1]} ({r[2]})" if r[2].isdigit() else r[1] for r in rows]
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    features = np.stack([category[order], _directors(directory, ids), bucket[order]], axis=1)
    return ids, features, tuple(titles[i] for i in order), len(vocab)


def _read_users(directory: Path) -> tuple[np.ndarray, np.ndarray, int]:
    path = directory / f"{DATASET}.user"
    rows = _read_table(path, ("user_id", "age", "gender", "occupation", "zip_code"))
    if not rows:
        raise ValueError(f"{path}: no users")
    ids = _ints(path, "user_id", [r[0] for r in rows])
    _unique_ids(path, ids)
    age = np.searchsorted(np.asarray(AGE_EDGES), _ints(path, "age", [r[1] for r in rows], 0), side="right")
    region = np.asarray([int(r[4][0]) if r[4][:1].isdigit() else N_REGIONS - 1 for r in rows], dtype=np.int64)
    occupations = sorted({r[3] for r in rows})
    genders = sorted({r[2] for r in rows})
    device = np.asarray([occupations.index(r[3]) * len(genders) + genders.index(r[2]) for r in rows], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    features = np.stack([ids, age, region, device], axis=1)[order]
    return ids[order], features.astype(np.int64), len(occupations) * len(genders)


def load_ml100k(directory: str | Path) -> MovieLens:
    """Read ``directory``'s ml-100k.{inter,item,user} (+ .link/.kg when present); see the module docstring."""
    directory = Path(directory)
    items, item_features, titles, n_genres = _read_items(directory)
    users, user_features, n_devices = _read_users(directory)
    path = directory / f"{DATASET}.inter"
    rows = _read_table(path, ("user_id", "item_id", "rating", "timestamp"))
    if not rows:
        raise ValueError(f"{path}: no interactions")
    user = _ints(path, "user_id", [r[0] for r in rows])
    item = _ints(path, "item_id", [r[1] for r in rows])
    rating = np.asarray([float(r[2]) for r in rows], dtype=np.float32)
    ts = _ints(path, "timestamp", [r[3] for r in rows], 0)
    for ids, known, what in ((user, users, "user_id"), (item, items, "item_id")):
        unknown = ~np.isin(ids, known)
        if unknown.any():
            raise ValueError(f"{path}:{int(np.argmax(unknown)) + 2}: {what} {int(ids[unknown][0])} is not listed")
    # Stable sorts: by time, then by user; equal timestamps keep the file order.
    order = np.argsort(ts, kind="stable")
    order = order[np.argsort(user[order], kind="stable")]
    user_row = np.searchsorted(users, user[order])
    seq_start = np.concatenate([[0], np.cumsum(np.bincount(user_row, minlength=users.size))]).astype(np.int64)
    active = np.diff(seq_start) > 0
    if not active.all():  # keep only users with interactions
        keep = np.flatnonzero(active)
        users, user_features = users[keep], user_features[keep]
        seq_start = np.concatenate([[0], np.cumsum(np.diff(seq_start)[keep])]).astype(np.int64)
    cards = {
        "user_id": int(users.max()) + 1,
        "age_bucket": len(AGE_EDGES) + 1,
        "region": N_REGIONS,
        "device": n_devices,
        "item_id": int(items.max()) + 1,
        "category": n_genres,
        "creator_id": int(item_features[:, 1].max()) + 1,
        "price_bucket": int(item_features[:, 2].max()) + 1,
    }
    assert user_features.shape[1] == contract.F_U and item_features.shape[1] == contract.F_C
    logger.info("movielens: %d interactions, %d users, %d items, %d genres, %d directors",
                ts.size, users.size, items.size, n_genres, cards["creator_id"] - 1)
    return MovieLens(
        users=users,
        user_features=user_features,
        items=items,
        item_features=item_features,
        titles=titles,
        seq_items=item[order],
        seq_ratings=rating[order],
        seq_times=ts[order],
        seq_start=seq_start,
        cardinalities=cards,
    )
