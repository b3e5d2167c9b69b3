"""The real Triton server (CPU profile) ranking with the FP8 QDQ graphs.

A copy of the model repository under tmp_path gets the tiny FP8 graphs as model.onnx
(export/fp8.py, serve=True); a second server runs on it (the shared model_repository is not
touched). The model.py files import ``serving`` (installed into the venv), so the copy only
needs the models' folders.

onnx_session.make_session gives QDQ graphs ONNX Runtime's basic optimization level: the extended
QDQ fusions of 1.31 reject float8 Q/DQ pairs or mis-compute them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest, infer
from export.config import PRESETS
from export.fp8 import run_fp8
from export.onnx_eval import PIPELINE, model_inputs
from export.world import make_world
from serving.contract import ENGINE_MODELS
from serving.onnx_session import make_session, run_checked
from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, run_server
from tests.test_fp8 import trained_tiny

PRESET = PRESETS["tiny"]
ATOL = 1e-4  # served FP8 scores vs the same graphs in-process (micro-batching changes GEMM blocking only)


def _copy_repository(target: Path) -> None:
    source = REPO_ROOT / "model_repository"
    for folder in source.iterdir():
        if (folder / "config.pbtxt").is_file():
            shutil.copytree(folder, target / folder.name, ignore=shutil.ignore_patterns("__pycache__"))


@pytest.fixture(scope="module")
def fp8_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("fp8_serving") / "model_repository"
    _copy_repository(repo)
    model = trained_tiny()
    world = make_world(PRESET.world)
    run_fp8(model, world, world.eval_requests().subset(slice(0, 8)), repo, repo.parent / "reports", serve=True)
    return repo


@pytest.fixture(scope="module")
def fp8_server(fp8_repository: Path) -> Iterator[RunningServer]:
    with run_server(ServerConfig(model_repository=fp8_repository, config_name="cpu")) as server:
        yield server


def test_ranks_with_fp8_graphs(fp8_repository: Path, fp8_server: RunningServer):
    graphs = {n: make_session(fp8_repository / n / "1" / "model.onnx") for n in PIPELINE}

    def run(name: str, inputs: dict) -> dict:
        return run_checked(graphs[name], ENGINE_MODELS[name], inputs)

    requests = make_world(PRESET.world).eval_requests().subset(slice(0, 4))
    client = grpcclient.InferenceServerClient(fp8_server.grpc_url)
    try:
        for row in range(len(requests)):
            inputs = model_inputs(requests, row, run)
            for tier in ("light", "heavy"):
                expected = run(f"scorer_{tier}", inputs[f"scorer_{tier}"])["scores"].reshape(-1)  # heavy: one block
                served = infer(client, RankingRequest.from_requests(requests, row), route=tier, top_k=10)
                assert served.route == tier
                np.testing.assert_allclose(served.scores, expected, atol=ATOL, rtol=0)
    finally:
        client.close()
