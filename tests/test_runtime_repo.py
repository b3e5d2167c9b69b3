"""The runtime model repository (export/runtime_repo.py): the image's read-only repository mirrored
into the cache volume by symlinks, on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from export.profiles import PLAN_FILE, STAMP_FILE
from export.runtime_repo import mirror

REPO = Path(__file__).resolve().parents[1] / "model_repository"


def make_source(root: Path) -> Path:
    files = {
        "scorer_light/config.pbtxt": "platform: tensorrt_plan",
        "scorer_light/configs/cpu.pbtxt": "backend: python",
        "scorer_light/1/model.onnx": "graph",
        "scorer_light/1/model.py": "from serving.triton import x",
        "scorer_light/1/__pycache__/model.cpython-312.pyc": "bytecode",
        "scorer_light/1/model.plan": "a plan someone built in the image",  # never served: not stamped here
        "ranker/config.pbtxt": "backend: python",
        "ranker/1/model.py": "from serving.triton import y",
        "adaptive_ranking/config.pbtxt": "platform: ensemble",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "adaptive_ranking" / "1").mkdir()
    return root


def snapshot(root: Path) -> dict[str, tuple[int, float]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*")}


def test_mirror_links_every_file_and_writes_nothing_in_the_source(tmp_path: Path):
    source, dest = make_source(tmp_path / "ro"), tmp_path / "cache" / "model_repository"
    before = snapshot(source)
    mirror(source, dest)
    assert snapshot(source) == before
    for rel in ("scorer_light/config.pbtxt", "scorer_light/configs/cpu.pbtxt", "scorer_light/1/model.onnx",
                "ranker/1/model.py", "adaptive_ranking/config.pbtxt"):
        link = dest / rel
        assert link.is_symlink() and os.readlink(link) == str(source / rel)
        assert link.read_text() == (source / rel).read_text()
    assert (dest / "adaptive_ranking" / "1").is_dir()
    assert not (dest / "scorer_light" / "1" / "__pycache__").exists()
    assert not (dest / "scorer_light" / "1" / PLAN_FILE).exists(), "a plan comes only from the cache's own build"


def test_build_outputs_survive_and_stale_entries_go(tmp_path: Path):
    source, dest = make_source(tmp_path / "ro"), tmp_path / "model_repository"
    mirror(source, dest)
    version = dest / "scorer_light" / "1"
    (version / PLAN_FILE).write_bytes(b"built here")
    (version / STAMP_FILE).write_text("{}")
    (version / ".model.plan.tmp").write_bytes(b"torn write of a crashed build")
    (dest / "ranker" / "1" / PLAN_FILE).write_bytes(b"plan of a model whose source is gone")
    (dest / "__pycache__").mkdir()
    (dest / "scorer_light" / "config.pbtxt").unlink()
    (dest / "scorer_light" / "config.pbtxt").write_text("a stale copy, not a link")
    (source / "scorer_light" / "configs" / "cpu.pbtxt").unlink()
    shutil.rmtree(source / "ranker")

    mirror(source, dest)
    assert (version / PLAN_FILE).read_bytes() == b"built here" and (version / STAMP_FILE).is_file()
    assert not (version / ".model.plan.tmp").exists()
    assert not (dest / "ranker").exists(), "Triton (model control none) would load any directory left here"
    assert not (dest / "__pycache__").exists()
    assert (dest / "scorer_light" / "config.pbtxt").is_symlink()
    assert not (dest / "scorer_light" / "configs" / "cpu.pbtxt").exists()
    assert sorted(p.name for p in dest.iterdir()) == ["adaptive_ranking", "scorer_light"]


def test_mirror_again_changes_nothing(tmp_path: Path):
    source, dest = make_source(tmp_path / "ro"), tmp_path / "model_repository"
    mirror(source, dest)
    links = {p: os.lstat(p).st_ino for p in dest.rglob("*")}
    mirror(source, dest)
    assert {p: os.lstat(p).st_ino for p in dest.rglob("*")} == links


def test_mirror_refuses_nesting_and_a_missing_source(tmp_path: Path):
    source = make_source(tmp_path / "ro")
    with pytest.raises(ValueError, match="must not contain each other"):
        mirror(source, source / "runtime")
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        mirror(tmp_path / "absent", tmp_path / "dest")


def test_the_projects_repository_mirrors_whole(tmp_path: Path):
    """Every config, model.py and exported graph of the real repository is reachable in the mirror
    (dotfiles such as .gitkeep are not mirrored)."""
    dest = tmp_path / "model_repository"
    mirror(REPO, dest)
    for path in REPO.rglob("*"):
        kept = "__pycache__" not in path.parts and not path.name.startswith(".")
        if path.is_file() and kept and path.name not in (PLAN_FILE, STAMP_FILE):
            assert (dest / path.relative_to(REPO)).resolve() == path.resolve()
