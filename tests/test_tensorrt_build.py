"""What the TensorRT build derives, without TensorRT: profiles, file names, which engines, and that
every engine model's production config.pbtxt matches what the build writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

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
