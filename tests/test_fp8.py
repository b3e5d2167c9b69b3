"""FP8: the QDQ rewrite, selective precision and the exported FP8 graphs against FP32 (tiny preset).

The module fixture runs the whole FP8 step (export/fp8.py) once into tmp_path on the tiny
checkpoint that `make test`'s export trains (missing: the tests fail, naming the command);
tests then check its graphs and report.
Tolerances: FP8 changes values legitimately, so scores are bounded by the accuracy budget and a
loose absolute bound, not compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.config import PRESETS
from export.fp8 import FP8_FILE, FP32_FILE, QUANTIZED_MODELS, run_fp8
from export.models import RankingModel
from export.onnx_eval import PIPELINE
from export.qdq import FP8_ZERO_POINT, quantize_e4m3
from export.samples import random_inputs
from export.train import checkpoint_key, load_checkpoint
from export.world import make_world
from serving.contract import ENGINE_MODELS
from serving.onnx_session import make_session

ROOT = Path(__file__).resolve().parents[1]
PRESET = PRESETS["tiny"]


def trained_tiny() -> RankingModel:
    """The tiny model `make test` trains; its absence fails clearly rather than quantizing random weights."""
    ckpt = ROOT / "checkpoints" / f"tiny-{checkpoint_key(PRESET)}.pt"
    if not ckpt.exists():
        pytest.fail(f"{ckpt} is missing: run `make export PRESET=tiny` (make test does) before the FP8 tests")
    return load_checkpoint(PRESET, ckpt)[0]


@pytest.fixture(scope="module")
def fp8_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    model = trained_tiny()
    world = make_world(PRESET.world)
    folder = tmp_path_factory.mktemp("fp8")
    report = run_fp8(model, world, world.eval_requests(), folder / "repo", folder / "reports", serve=True)
    return folder, report


def test_quantize_e4m3_saturates_and_rounds():
    q = quantize_e4m3(np.array([0.0, 1.0, 1.0625, 1000.0, -1000.0], dtype=np.float32), 1.0).astype(np.float32)
    assert q.tolist() == [0.0, 1.0, 1.0, 448.0, -448.0]


def test_graphs_are_standard_qdq(fp8_run):
    folder, report = fp8_run
    for name in QUANTIZED_MODELS:
        model = onnx.load(str(folder / "repo" / name / "1" / FP8_FILE))
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
        assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [19]
        assert not [n for n in model.graph.node if n.domain == "trt"]
        zp = next(i for i in model.graph.initializer if i.name == FP8_ZERO_POINT)
        assert zp.data_type == onnx.TensorProto.FLOAT8E4M3FN
        summary = report["models"][name]["qdq"]
        n_fp8 = len(report["models"][name]["fp8_layers"])
        assert summary["fp8_initializers"] >= n_fp8 and summary["quantize_linear"] >= n_fp8


@pytest.mark.parametrize("name", PIPELINE, ids=str)
def test_fp8_graph_close_to_fp32(fp8_run, name: str):
    folder, _ = fp8_run
    sig = ENGINE_MODELS[name]
    version = folder / "repo" / name / "1"
    fixed = {"E": PRESET.embedding.dim, "D": PRESET.tower.d_model}
    inputs = random_inputs(sig, {"L": 9, "N": 33, "B": 2, **fixed}, np.random.default_rng(3))
    for key in ("user_state", "history_kv", "user_emb", "history_emb", "candidate_emb"):
        if key in inputs:
            inputs[key] *= 0.3  # the scale of real embeddings and states
    ref = make_session(version / FP32_FILE).run(None, inputs)
    got = make_session(version / FP8_FILE).run(None, inputs)
    assert (version / "model.onnx").read_bytes() == (version / FP8_FILE).read_bytes(), "serve=True swaps model.onnx"
    for r, g in zip(ref, got):
        torch.testing.assert_close(torch.from_numpy(g), torch.from_numpy(r), rtol=0.0, atol=0.35)


def test_report_within_budget_with_a_decision_per_layer(fp8_run):
    folder, report = fp8_run
    on_disk = json.loads((folder / "reports" / "fp8.json").read_text())
    assert on_disk["layers"] == report["layers"]
    assert (folder / "reports" / "fp8.md").read_text().count("| `") == len(report["layers"])
    assert {r["decision"] for r in report["layers"]} <= {"fp8", "fp16"}
    assert {r["model"] for r in report["layers"]} == set(QUANTIZED_MODELS)
    final = report["selection_steps"][-1]
    assert final["within_budget"] or all(r["decision"] == "fp16" for r in report["layers"])
    effect = report["all_fp8_graphs"]["effect"]
    # The ONNX Runtime graphs agree with the PyTorch selection up to a small tolerance on tiny's 60 requests.
    assert effect["auc_drop"] <= report["budget"]["auc_drop"] + 0.002
    assert effect["ndcg10_drop"] <= report["budget"]["ndcg10_drop"] + 0.005
    assert report["embedding"]["choice"] == "fp16"
