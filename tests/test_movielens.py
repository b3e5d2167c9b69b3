"""The MovieLens-100k loader (export/movielens.py) on small files in RecBole's format, written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.movielens import AGE_EDGES, load_ml100k, ml100k_dir
from serving import contract

ITEMS = [  # item_id, title, year, genres
    (3, "Four Rooms", "1995", "Thriller"),
    (1, "Toy Story", "1995", "Animation Children's Comedy"),
    (2, "GoldenEye", "1995", "Action Adventure Thriller"),
    (4, "Nosferatu", "1922", "Horror"),
    (5, "Untitled", "unkonwn", "Comedy"),
]
USERS = [  # user_id, age, gender, occupation, zip
    (2, 53, "F", "other", "94043"),
    (1, 24, "M", "technician", "85711"),
    (3, 17, "M", "writer", "T8H1N"),
]
# user, item, rating, timestamp: out of time order, with ties that must keep file order.
INTER = [
    (1, 3, 4, 300),
    (1, 1, 5, 100),
    (2, 4, 1, 50),
    (1, 5, 2, 200),
    (1, 2, 3, 200),  # same time as item 5 above: 5 stays first
    (2, 2, 4, 40),
    (2, 1, 3, 60),
]
LINKS = [(1, "m.toy"), (2, "m.goldeneye"), (4, "m.nosferatu")]
KG = [
    ("m.toy", "film.film.directed_by", "m.lasseter"),
    ("m.toy", "film.film.actor", "m.hanks"),
    ("m.goldeneye", "film.film.directed_by", "m.campbell"),
    ("m.goldeneye", "film.film.directed_by", "m.second"),  # only the first listed counts
    ("m.nosferatu", "film.film.directed_by", "m.murnau"),
]


def _write(directory: Path, name: str, header: str, rows: list[tuple]) -> None:
    lines = [header] + ["\t".join(map(str, r)) for r in rows]
    (directory / f"ml-100k.{name}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_ml100k(directory: Path, inter: list[tuple] = INTER, graph: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory, "inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float", inter)
    _write(directory, "item", "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq", ITEMS)
    _write(directory, "user", "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token", USERS)
    if graph:
        _write(directory, "link", "item_id:token\tentity_id:token", LINKS)
        _write(directory, "kg", "head_id:token\trelation_id:token\ttail_id:token", KG)
    return directory


def test_sequences_in_time_order_ties_in_file_order(tmp_path: Path) -> None:
    data = load_ml100k(write_ml100k(tmp_path))
    np.testing.assert_array_equal(data.users, [1, 2])  # user 3 has no interaction: left out
    assert data.sequence(0).tolist() == [1, 5, 2, 3]
    assert data.sequence(1).tolist() == [2, 4, 1]
    assert data.seq_start.tolist() == [0, 4, 7]
    assert data.seq_times[:4].tolist() == [100, 200, 200, 300]


def test_feature_slots(tmp_path: Path) -> None:
    data = load_ml100k(write_ml100k(tmp_path))
    np.testing.assert_array_equal(data.items, [1, 2, 3, 4, 5])
    # user_id, age bucket, ZIP zone, occupation x gender (occupations other, technician, writer; F, M)
    assert data.user_features.tolist() == [[1, 1, 8, 3], [2, 5, 9, 0]]
    assert np.searchsorted(AGE_EDGES, 17, side="right") == 0
    genres = sorted({g for *_, gs in ITEMS for g in gs.split()})
    # Toy Story: Animation and Children's occur once, Comedy twice: Animation (rarest, listed first)
    assert data.features_of(np.array([1]))[0, 0] == genres.index("Animation")
    assert data.features_of(np.array([2]))[0, 0] == genres.index("Action")
    # directors numbered in entity order: campbell 1, lasseter 2, murnau 3; no link -> 0
    assert data.item_features[:, 1].tolist() == [2, 1, 0, 3, 0]
    # release year in 5-year buckets from 1922; unknown -> 0
    assert data.item_features[:, 2].tolist() == [15, 15, 15, 1, 0]
    assert data.title_of(4) == "Nosferatu (1922)" and data.title_of(5) == "Untitled"
    assert data.user_features.shape[1] == contract.F_U and data.item_features.shape[1] == contract.F_C
    assert data.cardinalities == {
        "user_id": 3, "age_bucket": 7, "region": 11, "device": 6,
        "item_id": 6, "category": len(genres), "creator_id": 4, "price_bucket": 16,
    }


def test_without_graph_files_creator_is_zero(tmp_path: Path) -> None:
    data = load_ml100k(write_ml100k(tmp_path, graph=False))
    assert not data.item_features[:, 1].any()


@pytest.mark.parametrize(
    ("inter", "match"),
    [
        ([(1, 9, 4, 1)], "item_id 9 is not listed"),
        ([(7, 1, 4, 1)], "user_id 7 is not listed"),
        ([(1, 1, 4, "soon")], "timestamp must be numbers"),
        ([], "no interactions"),
    ],
    ids=["unknown-item", "unknown-user", "bad-timestamp", "empty"],
)
def test_bad_interactions_rejected(tmp_path: Path, inter: list[tuple], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_ml100k(write_ml100k(tmp_path, inter=inter))


def test_missing_column_named(tmp_path: Path) -> None:
    write_ml100k(tmp_path)
    (tmp_path / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t1\t4\n")
    with pytest.raises(ValueError, match="lacks \\['timestamp'\\]"):
        load_ml100k(tmp_path)


def test_the_wheel_ships_the_real_data() -> None:
    data = load_ml100k(ml100k_dir())
    assert (data.users.size, data.items.size, data.seq_items.size) == (943, 1682, 100_000)
