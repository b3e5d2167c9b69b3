"""Plans, stamps and timing caches in the writable cache volume: what to build, what to keep, how to write it.

    python3 -m export.tensorrt_build --model-repository ... --cache /var/cache/ranking   # the only caller

The TensorRT work itself is behind the ``Engines`` seam (export/tensorrt_build.py ``TensorRTEngines``);
everything here runs on real files in tests (tests/test_tensorrt_build.py):
- a plan is rebuilt when its stamp (ONNX sha256, GPU model + compute capability, TensorRT version)
  differs from what it would be now (export/profiles.py ``engines_to_build``);
- the stamp is removed before a rebuild and written only after the engine matched ONNX Runtime,
  so an interrupted or failed build is retried at the next start instead of served;
- one timing cache per GPU model, compute capability and TensorRT version: a cache from another
  GPU or TensorRT is refused by TensorRT (``set_timing_cache`` returns False), and the build then
  starts from an empty one instead of ignoring the refusal.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

from export.profiles import ONNX_FILE, PLAN_FILE, STAMP_FILE, engines_to_build, stamp

log = logging.getLogger("export.engine_cache")
TIMING_DIR = "timing-caches"
LOCK_FILE = ".build.lock"


class Engines(Protocol):
    """The TensorRT side of one engine: build it, and check it against ONNX Runtime."""

    def build(self, onnx_path: Path, timing_cache: bytes) -> tuple[bytes, bytes]: ...  # plan, updated cache
    def check(self, onnx_path: Path, plan_path: Path) -> float: ...  # max abs diff; raises when out of tolerance


class BuilderConfig(Protocol):
    """The two tensorrt.IBuilderConfig calls the timing cache needs."""

    def create_timing_cache(self, serialized: bytes) -> object: ...
    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool: ...


@contextmanager
def locked_cache(cache_dir: Path) -> Iterator[Path]:
    """The cache volume, writable and held by this process only: containers sharing it build one at a time."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(cache_dir / LOCK_FILE, "a")
    except OSError as e:
        raise RuntimeError(
            f"the engine cache {cache_dir} is not a writable directory for uid {os.getuid()} ({e}): mount a "
            f"volume there that this user can write, e.g. docker run -v ranking-engines:{cache_dir}"
        ) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another container is building in %s: waiting for it", cache_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield cache_dir


def timing_cache_path(cache_dir: Path, gpu_key: str, trt_version: str) -> Path:
    """The timing cache for one GPU model + compute capability (``gpu_key``) and one TensorRT version."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", f"{gpu_key} trt {trt_version}").strip("-")
    return cache_dir / TIMING_DIR / f"{slug}.cache"


def attach_timing_cache(config: BuilderConfig, stored: bytes) -> bool:
    """Give ``config`` the stored timing cache; an empty one when TensorRT refuses it. True: the stored one is used."""
    if stored:
        cache = config.create_timing_cache(stored)
        if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
            return True
        log.warning("TensorRT refused the stored timing cache (another GPU or TensorRT, or damaged): starting empty")
    if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
        raise RuntimeError("TensorRT refused an empty timing cache")
    return False


def write_atomic(path: Path, data: bytes) -> None:
    """Readers (Triton, the next start) see the old file or the whole new one, never a torn write."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_stale(
    model_repository: Path, gpu_key: str, trt_version: str, cache_dir: Path, engines: Engines, force: bool = False
) -> list[str]:
    """Build every engine whose plan is missing or stale, in ``model_repository`` (writable); returns their names."""
    todo = engines_to_build(model_repository, gpu_key, trt_version, force)
    cache_path = timing_cache_path(cache_dir, gpu_key, trt_version)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    for name in todo:
        version = model_repository / name / "1"
        (version / STAMP_FILE).unlink(missing_ok=True)
        log.info("building %s for %s (TensorRT %s)", name, gpu_key, trt_version)
        stored = cache_path.read_bytes() if cache_path.is_file() else b""
        plan, cache = engines.build(version / ONNX_FILE, stored)
        write_atomic(version / PLAN_FILE, plan)
        write_atomic(cache_path, cache)
        diff = engines.check(version / ONNX_FILE, version / PLAN_FILE)
        log.info("%s: engine vs ONNX Runtime max abs diff %.3g", name, diff)
        write_atomic(version / STAMP_FILE, json.dumps(stamp(version / ONNX_FILE, gpu_key, trt_version)).encode())
    return todo
