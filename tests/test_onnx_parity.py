"""ONNX Runtime versus the PyTorch serving modules, for every engine model.

A freshly initialised tiny model is exported once per module to tmp_path (export_model);
each case draws fresh valid inputs (random_inputs, huge ids included) at sizes away
from the export example sizes, including the limits N=1, L=1, B=1, B=B_MAX and N=N_MAX.
Tolerances: the embedding lookup is a gather (exact); the rest is FP32 arithmetic
in a different kernel order, rtol 1e-4 / atol 1e-5 on scores in (0, 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from export.config import PRESETS
from export.models import RankingModel
from export.onnx_export import OPSET, export_model, model_dims
from export.samples import random_inputs
from export.serving import SERVING_MODULES
from export.train import build_model
from serving.contract import B_MAX, ENGINE_MODELS, L_MAX, N_MAX

EXACT = {"rtol": 0.0, "atol": 0.0}
FP32 = {"rtol": 1e-4, "atol": 1e-5}

CASES: list[tuple[str, dict[str, int], dict[str, float]]] = [
    ("embedding_lookup", {"B": 1, "L": 1, "N": 1}, EXACT),
    ("embedding_lookup", {"B": 3, "L": 13, "N": 29}, EXACT),
    ("embedding_lookup", {"B": 1, "L": L_MAX, "N": N_MAX}, EXACT),
    ("user_tower", {"B": 1, "L": 1}, FP32),
    ("user_tower", {"B": 5, "L": 13}, FP32),  # padded histories: history_len < L for most rows
    ("user_tower", {"B": 2, "L": L_MAX}, FP32),
    ("scorer_light", {"B": 1, "N": 1}, FP32),
    ("scorer_light", {"B": 3, "N": 257}, FP32),
    ("scorer_light", {"B": B_MAX, "N": N_MAX}, FP32),
    ("scorer_heavy", {"B": 1, "L": 1, "N": 1}, FP32),
    ("scorer_heavy", {"B": 3, "L": 9, "N": 50}, FP32),
    ("scorer_heavy", {"B": 1, "L": L_MAX, "N": N_MAX}, FP32),
    ("scorer_heavy", {"B": 8, "L": 16, "N": 512}, FP32),
    ("scorer_heavy", {"B": B_MAX, "L": 32, "N": 64}, FP32),
    ("per_candidate_baseline", {"L": 1, "N": 1}, FP32),
    ("per_candidate_baseline", {"L": 5, "N": 13}, FP32),
    ("per_candidate_baseline", {"L": 2, "N": N_MAX}, FP32),  # the naive model: small L only
]


def _case_id(case: tuple[str, dict[str, int], dict[str, float]]) -> str:
    name, sizes, _ = case
    return "-".join([name] + [f"{k}{v}" for k, v in sizes.items()])


@pytest.fixture(scope="module")
def model() -> RankingModel:
    return build_model(PRESETS["tiny"]).eval()


@pytest.fixture(scope="module")
def exported(model: RankingModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("onnx")
    return {name: export_model(model, name, root / name / "model.onnx") for name in ENGINE_MODELS}


@pytest.fixture(scope="module")
def sessions(exported: dict[str, Path]) -> dict[str, ort.InferenceSession]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return {
        name: ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        for name, path in exported.items()
    }


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
def test_opset_and_names(name: str, exported: dict[str, Path], sessions: dict[str, ort.InferenceSession]):
    proto = onnx.load(str(exported[name]))
    onnx.checker.check_model(proto)
    default_domain = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
    assert default_domain and default_domain[0] >= max(OPSET, 19)
    sig, session = ENGINE_MODELS[name], sessions[name]
    assert [i.name for i in session.get_inputs()] == sig.input_names
    assert [o.name for o in session.get_outputs()] == sig.output_names


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_onnx_matches_pytorch(case, model: RankingModel, sessions: dict[str, ort.InferenceSession]):
    name, sym_sizes, tol = case
    sig = ENGINE_MODELS[name]
    sizes = {**sym_sizes, **model_dims(model)}
    seed = sum(ord(c) for c in _case_id(case))
    inputs = random_inputs(sig, sizes, np.random.default_rng(seed))
    got = dict(zip(sig.output_names, sessions[name].run(sig.output_names, inputs)))
    module = SERVING_MODULES[name](model).eval()
    with torch.no_grad():
        ref = module(*(torch.from_numpy(inputs[n]) for n in sig.input_names))
    ref = (ref,) if isinstance(ref, torch.Tensor) else ref
    for spec, expected in zip(sig.outputs, ref):
        shape = tuple(d if isinstance(d, int) else sizes[d] for d in spec.dims)
        assert got[spec.name].shape == shape, f"{name} output '{spec.name}'"
        assert got[spec.name].dtype == np.dtype(spec.numpy_dtype)
        np.testing.assert_allclose(got[spec.name], expected.numpy(), **tol, err_msg=f"{name} '{spec.name}'")
