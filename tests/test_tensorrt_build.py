"""What the TensorRT build derives, without TensorRT: profiles, file names, which engines, that every
engine model's production config.pbtxt matches what the build writes, and the plans, stamps and
timing caches kept in the cache volume (the TensorRT calls replaced at export/engine_cache.py's seams)."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.engine_cache import LOCK_FILE, attach_timing_cache, build_stale, locked_cache, timing_cache_path
from export.profiles import (
    ONNX_FILE,
    OPT_SIZES,
    PLAN_FILE,
    STAMP_FILE,
    engines_to_build,
    fixed_dims,
    profile,
    stamp,
)
from export.runtime_repo import mirror
from serving.contract import DIM_LIMITS, ENGINE_MODELS, SCORER_HEAVY, SCORER_LIGHT, USER_TOWER

REPO = Path(__file__).resolve().parents[1] / "model_repository"
CONFIG_DTYPE = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32"}


def test_scorer_heavy_profile_from_signature():
    p = profile(SCORER_HEAVY, {"D": 16, "E": 8})
    assert p["history_kv"] == ((1, 1, 16), (OPT_SIZES["B"], OPT_SIZES["L"], 16), (DIM_LIMITS["B"][1], 256, 16))
    b, n = (1, OPT_SIZES["B"], DIM_LIMITS["B"][1]), (1, OPT_SIZES["N"], DIM_LIMITS["N"][1])
    assert p["candidate_emb"] == tuple((b[i], n[i], 4, 8) for i in range(3))  # one block of N per user row
    assert p["history_len"] == ((1,), (1,), (DIM_LIMITS["B"][1],))


def test_profile_min_opt_max_ordered_for_every_model():
    for name, sig in ENGINE_MODELS.items():
        for shapes in profile(sig, {"D": 16, "E": 8}).values():
            lo, opt, hi = shapes
            assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), (name, shapes)


def test_profile_needs_fixed_dims():
    with pytest.raises(ValueError, match="'D' has no limits"):
        profile(SCORER_LIGHT, {"E": 8})


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
def test_production_config_matches_build(name: str):
    """config.pbtxt: TensorRT plan named as the build writes it, inputs/outputs/dtypes/dims as the profile."""
    cfg = text_format.Parse((REPO / name / "config.pbtxt").read_text(), mc.ModelConfig())
    sig = ENGINE_MODELS[name]
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == PLAN_FILE
    prof = profile(sig, {"D": 16, "E": 8})
    for t in cfg.input:
        spec = sig.input(t.name)
        assert mc.DataType.Name(t.data_type) == CONFIG_DTYPE[spec.dtype]
        lo, _, hi = prof[t.name]
        dims = [-1 if a != b or isinstance(d, str) else a for a, b, d in zip(lo, hi, spec.dims)]
        assert list(t.dims) == (dims[1:] if sig.batched else dims)  # a batched config omits the batch dim
    assert [t.name for t in cfg.output] == sig.output_names


def test_fixed_dims_and_engines_to_build(tmp_path: Path):
    repo = tmp_path / "repo"
    for name in ENGINE_MODELS:
        (repo / name / "1").mkdir(parents=True)
        shutil.copy(REPO / name / "1" / ONNX_FILE, repo / name / "1" / ONNX_FILE)
    assert set(fixed_dims(repo / "user_tower" / "1" / ONNX_FILE, USER_TOWER)) == {"E"}
    assert engines_to_build(repo, "H100 sm_90", "10.11") == list(ENGINE_MODELS)
    version = repo / "user_tower" / "1"
    (version / PLAN_FILE).write_bytes(b"plan")
    (version / STAMP_FILE).write_text(json.dumps(stamp(version / ONNX_FILE, "H100 sm_90", "10.11")))
    assert "user_tower" not in engines_to_build(repo, "H100 sm_90", "10.11")
    assert "user_tower" in engines_to_build(repo, "L4 sm_89", "10.11"), "another GPU needs its own plan"
    assert "user_tower" in engines_to_build(repo, "H100 sm_90", "10.11", force=True)
    (version / ONNX_FILE).write_bytes((version / ONNX_FILE).read_bytes() + b" ")
    assert "user_tower" in engines_to_build(repo, "H100 sm_90", "10.11"), "a changed graph needs a rebuild"


# -- plans, stamps and timing caches in the cache volume (export/engine_cache.py) ---------------

H100, L4 = "NVIDIA H100 80GB HBM3 sm_90", "NVIDIA L4 sm_89"


class FakeEngines:
    """The Engines seam: a 'plan' naming its graph, a timing cache that grows by one entry per build."""

    def __init__(self, fail_check: str = "") -> None:
        self.fail_check = fail_check
        self.built: list[tuple[str, bytes]] = []  # (model, timing cache it was given)

    def build(self, onnx_path: Path, timing_cache: bytes) -> tuple[bytes, bytes]:
        name = onnx_path.parent.parent.name
        self.built.append((name, timing_cache))
        return f"plan of {name}".encode(), timing_cache + f"[{name}]".encode()

    def check(self, onnx_path: Path, plan_path: Path) -> float:
        assert plan_path.read_bytes() == f"plan of {onnx_path.parent.parent.name}".encode()
        if onnx_path.parent.parent.name == self.fail_check:
            raise AssertionError(f"{plan_path}: engine differs from ONNX Runtime")
        return 0.01


def runtime_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "model_repository"
    for name in ENGINE_MODELS:
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "1" / ONNX_FILE).write_bytes(f"graph of {name}".encode())
    return repo


def test_build_stale_builds_what_is_missing_once(tmp_path: Path):
    repo, engines = runtime_repo(tmp_path), FakeEngines()
    assert build_stale(repo, H100, "10.13.2.6", tmp_path, engines) == list(ENGINE_MODELS)
    for name in ENGINE_MODELS:
        version = repo / name / "1"
        assert (version / PLAN_FILE).read_bytes() == f"plan of {name}".encode()
        assert json.loads((version / STAMP_FILE).read_text()) == stamp(version / ONNX_FILE, H100, "10.13.2.6")
    assert build_stale(repo, H100, "10.13.2.6", tmp_path, engines) == []
    assert build_stale(repo, L4, "10.13.2.6", tmp_path, engines) == list(ENGINE_MODELS), "another GPU model"
    assert not list(repo.rglob(".*.tmp"))


def test_a_plan_that_fails_its_check_is_not_stamped_and_is_rebuilt(tmp_path: Path):
    repo = runtime_repo(tmp_path)
    build_stale(repo, H100, "10.13.2.6", tmp_path, FakeEngines())
    with pytest.raises(AssertionError, match="engine differs"):
        build_stale(repo, H100, "10.13.2.6", tmp_path, FakeEngines(fail_check="user_tower"), force=True)
    assert not (repo / "user_tower" / "1" / STAMP_FILE).exists(), "an unchecked plan keeps no stamp"
    assert "user_tower" in engines_to_build(repo, H100, "10.13.2.6")


def test_timing_cache_is_kept_per_gpu_and_tensorrt(tmp_path: Path):
    repo, engines = runtime_repo(tmp_path), FakeEngines()
    build_stale(repo, H100, "10.13.2.6", tmp_path, engines)
    first, second = engines.built[0], engines.built[1]
    assert first[1] == b"" and second[1] == f"[{first[0]}]".encode(), "each build starts from the cache so far"
    h100 = timing_cache_path(tmp_path, H100, "10.13.2.6")
    assert h100.read_bytes().count(b"[") == len(ENGINE_MODELS)
    engines.built.clear()
    build_stale(repo, L4, "10.13.2.6", tmp_path, engines)
    assert engines.built[0][1] == b"", "an L4 build never starts from the H100's cache"
    paths = {timing_cache_path(tmp_path, gpu, trt) for gpu in (H100, L4) for trt in ("10.13.2.6", "10.13.3.9")}
    assert len(paths) == 4 and all(p.parent == tmp_path / "timing-caches" for p in paths)
    assert h100.name == "NVIDIA-H100-80GB-HBM3-sm-90-trt-10.13.2.6.cache"


class FakeBuilderConfig:
    """tensorrt.IBuilderConfig's timing-cache calls: refuses caches it was told to refuse."""

    def __init__(self, refuse: set[bytes]) -> None:
        self.refuse, self.attached = refuse, None

    def create_timing_cache(self, serialized: bytes) -> object:
        return ("cache", serialized)

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        assert ignore_mismatch is False, "a mismatching cache must be refused, not used"
        if cache[1] in self.refuse:
            return False
        self.attached = cache
        return True


@pytest.mark.parametrize(
    ("stored", "refuse", "used", "attached"),
    [
        (b"from this GPU", set(), True, b"from this GPU"),
        (b"from another GPU", {b"from another GPU"}, False, b""),
        (b"", set(), False, b""),
    ],
    ids=["accepted", "refused-starts-empty", "none-stored"],
)
def test_attach_timing_cache_checks_the_result(stored: bytes, refuse: set[bytes], used: bool, attached: bytes):
    config = FakeBuilderConfig(refuse)
    assert attach_timing_cache(config, stored) is used
    assert config.attached == ("cache", attached)


def test_attach_timing_cache_refusing_even_an_empty_cache_fails():
    with pytest.raises(RuntimeError, match="refused an empty timing cache"):
        attach_timing_cache(FakeBuilderConfig({b"", b"x"}), b"x")


def test_cache_volume_is_locked_and_an_unusable_one_named(tmp_path: Path):
    with locked_cache(tmp_path / "cache") as cache:
        with open(cache / LOCK_FILE) as other, pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(RuntimeError, match=f"engine cache {tmp_path}/file/cache is not a writable directory .*-v "):
        with locked_cache(tmp_path / "file" / "cache"):
            pass


def test_start_up_on_the_projects_repository(tmp_path: Path):
    """What every start does, TensorRT aside: mirror the repository into the cache, build there, twice."""
    cache = tmp_path / "cache"
    runtime = cache / "model_repository"
    before = sorted(p.name for p in REPO.rglob("*"))
    mirror(REPO, runtime)
    assert build_stale(runtime, H100, "10.13.2.6", cache, FakeEngines()) == list(ENGINE_MODELS)
    mirror(REPO, runtime)
    assert build_stale(runtime, H100, "10.13.2.6", cache, FakeEngines()) == [], "plans survive the next start"
    assert sorted(p.name for p in REPO.rglob("*")) == before, "nothing is written into the image's repository"
    for name in ENGINE_MODELS:
        assert (runtime / name / "1" / PLAN_FILE).is_file() and not (runtime / name / "1" / PLAN_FILE).is_symlink()
