"""The runtime model repository: the image's read-only repository mirrored into the writable cache volume.

    python3 -m export.tensorrt_build --model-repository /opt/ranking/model_repository --cache /var/cache/ranking

Triton serves the mirror (``<cache>/model_repository``). Every directory is created there and every
file is a symlink to the read-only source, so configs, model.py and the ONNX graphs are always the
image's own: a cache volume kept across an image update cannot serve stale graphs or configs (a
named volume mounted on the repository itself would, silently). Only the build's outputs (plans and
their stamps) are real files in the mirror; their stamps say when they are stale.

Whatever the source no longer has is removed from the mirror at every start, plans of a removed
model included: with ``--model-control-mode=none`` Triton loads every directory it finds. No
``__pycache__`` or ``.pyc`` is mirrored, for the same reason.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from export.profiles import PLAN_FILE, STAMP_FILE

log = logging.getLogger("export.runtime_repo")
GENERATED = frozenset({PLAN_FILE, STAMP_FILE})  # written into the mirror by the build, never linked
SKIPPED_DIRS = frozenset({"__pycache__"})


def _skipped(name: str) -> bool:
    return name.endswith(".pyc") or name.startswith(".")


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.is_dir() and not link.is_symlink():
        shutil.rmtree(link)
    elif link.exists() or link.is_symlink():
        link.unlink()
    link.symlink_to(target)


def mirror(source: Path, dest: Path) -> None:
    """Make ``dest`` the symlinked mirror of ``source``, keeping the build's outputs in kept directories."""
    source, dest = source.resolve(), dest.absolute()
    if dest.resolve().is_relative_to(source) or source.is_relative_to(dest.resolve()):
        raise ValueError(f"the runtime repository {dest} and its source {source} must not contain each other")
    if not source.is_dir():
        raise FileNotFoundError(f"model repository {source} is not a directory")
    wanted: set[Path] = {Path(".")}
    for root, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not _skipped(d)]
        rel = Path(root).relative_to(source)
        out = dest / rel
        if out.is_symlink() or (out.exists() and not out.is_dir()):
            out.unlink()
        out.mkdir(parents=True, exist_ok=True)
        for d in [d for d in dirs if (Path(root) / d).is_symlink()]:  # os.walk does not enter these: link them
            _link(out / d, Path(root) / d)
            dirs.remove(d)
            wanted.add(rel / d)
        wanted.update(rel / d for d in dirs)
        for name in files:
            if name in GENERATED or _skipped(name):
                continue
            _link(out / name, Path(root) / name)
            wanted.add(rel / name)
    _prune(dest, wanted)


def _prune(dest: Path, wanted: set[Path]) -> None:
    for root, dirs, files in os.walk(dest, topdown=True):
        rel = Path(root).relative_to(dest)
        for d in list(dirs):
            if rel / d not in wanted:
                log.info("removing %s from the runtime repository (not in the image's repository)", rel / d)
                path = Path(root) / d
                if path.is_symlink():
                    path.unlink()
                else:
                    shutil.rmtree(path)
                dirs.remove(d)
        for name in files:
            if rel / name not in wanted and not (name in GENERATED and rel.name.isdigit()):
                (Path(root) / name).unlink()
