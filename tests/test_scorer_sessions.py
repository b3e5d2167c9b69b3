"""serving/scorer_sessions.py: the scorers' graphs in the ranker's process (the CPU profile's calls).

The ranker's routes through it are tests/test_triton_models.py (the "numpy" ranker) and, through a
real server, tests/test_serving.py; here its own contract: the same scores as the scorer model,
errors as ScorerError naming the scorer, and the RankerConfig switch.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from export.config import PRESETS
from export.onnx_export import export_model, model_dims
from export.samples import random_inputs
from export.train import build_model
from serving.batcher import ScorerError
from serving.contract import ENGINE_MODELS
from serving.onnx_session import make_session, run_checked
from serving.ranker import RankerConfig
from serving.scorer_sessions import ScorerSessions


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("scorers")
    model = build_model(PRESETS["tiny"]).eval()
    for name in ("scorer_light", "scorer_heavy"):
        export_model(model, name, root / name / "1" / "model.onnx")
    return root, model_dims(model)


@pytest.fixture(scope="module")
def sessions(repo) -> ScorerSessions:
    s = ScorerSessions.from_repository(repo[0])
    yield s
    s.close()


def scorer_arrays(tier: str, dims: dict[str, int], seed: int) -> dict[str, np.ndarray]:
    sig = ENGINE_MODELS[f"scorer_{tier}"]
    return random_inputs(sig, {"N": 13, "n": 13, "B": 3, "L": 6, **dims}, np.random.default_rng(seed))


@pytest.mark.parametrize("tier", ["light", "heavy"])
def test_scores_equal_the_scorer_models_graph(tier: str, repo, sessions: ScorerSessions):
    root, dims = repo
    arrays = scorer_arrays(tier, dims, seed=1)
    name = f"scorer_{tier}"
    want = run_checked(make_session(root / name / "1" / "model.onnx"), ENGINE_MODELS[name], arrays)["scores"]
    got = asyncio.run(sessions(tier, arrays))
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32


def test_calls_run_side_by_side_on_the_event_loop(repo, sessions: ScorerSessions):
    """Light and heavy asked in one turn both answer (two workers), each with its own scores."""
    dims = repo[1]
    light, heavy = scorer_arrays("light", dims, 2), scorer_arrays("heavy", dims, 3)

    async def both() -> list[np.ndarray]:
        return await asyncio.gather(sessions("light", light), sessions("heavy", heavy))

    got_light, got_heavy = asyncio.run(both())
    np.testing.assert_array_equal(got_light, sessions.run("light", light))
    np.testing.assert_array_equal(got_heavy, sessions.run("heavy", heavy))


def test_bad_inputs_are_a_scorer_error_naming_scorer_and_input(repo, sessions: ScorerSessions):
    arrays = scorer_arrays("heavy", repo[1], 4)
    arrays["history_kv"].reshape(-1)[2] = np.nan
    with pytest.raises(ScorerError, match=r"scorer_heavy: .*history_kv.*NaN/Inf"):
        asyncio.run(sessions("heavy", arrays))
    light = scorer_arrays("light", repo[1], 5)
    light["candidate_user"][0] = 7  # B is 3
    with pytest.raises(ScorerError, match=r"scorer_light: .*candidate_user"):
        asyncio.run(sessions("light", light))


def test_an_engine_failure_is_a_scorer_error(repo, sessions: ScorerSessions, monkeypatch: pytest.MonkeyPatch):
    class Broken:
        def run(self, *_args: object) -> None:
            raise RuntimeError("out of memory")

    monkeypatch.setitem(sessions.sessions, "heavy", Broken())
    with pytest.raises(ScorerError, match="scorer_heavy: RuntimeError: out of memory"):
        asyncio.run(sessions("heavy", scorer_arrays("heavy", repo[1], 6)))


def test_missing_graph_names_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="scorer_light"):
        ScorerSessions.from_repository(tmp_path)


def test_ranker_config_scorer_calls():
    assert RankerConfig().scorer_calls == "bls"
    assert RankerConfig.from_parameters({"scorer_calls": "onnxruntime"}).scorer_calls == "onnxruntime"
    with pytest.raises(ValueError, match="scorer_calls must be one of bls, onnxruntime, got 'ort'"):
        RankerConfig.from_parameters({"scorer_calls": "ort"})
    with pytest.raises(ValueError, match="tensor_library numpy"):
        RankerConfig(scorer_calls="onnxruntime", tensor_library="torch")
