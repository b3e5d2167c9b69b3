"""The ranker's torch / DLPack path (the production profile's) served by the real server, on CPU.

No GPU here, so the production ranker config runs with its instance kind changed only:
a copy of the model repository whose ``ranker/configs/cpu.pbtxt`` is
``ranker/config.pbtxt`` with KIND_CPU (tensor_library "torch", FORCE_CPU_ONLY_INPUT_TENSORS
"no", every other setting as in production). The ranker then reads its inputs with
``torch.from_dlpack``, calls the scorers with ``Tensor.from_dlpack`` and answers by DLPack,
the code path the GPU runs, on CPU tensors (the stub imports the venv's CPU torch).

Every answer is compared with the session server's (tests/conftest.py), which serves the
NumPy path on the same ONNX files: the same requests must give identical answers, bit for
bit (same scorer inputs, single-threaded ONNX Runtime, and serving/arrays.py reproduces the NumPy
arithmetic exactly). Bad inputs must get the same INVALID_ARGUMENT message naming the input.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from client.ranking_client import RankingRequest, infer
from perf.repository import repository_copy
from serving.contract import RANKER, RankingResult
from serving.inprocess import InProcessRanker
from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, check_artifacts, run_server
from tests.test_faults import stub_pids
from tests.test_serving import raw_inputs

REPOSITORY = REPO_ROOT / "model_repository"


def torch_profile_on_cpu() -> str:
    """ranker/config.pbtxt (production) with every instance group moved to KIND_CPU."""
    cfg = text_format.Parse((REPOSITORY / "ranker" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert cfg.parameters["tensor_library"].string_value == "torch"
    assert cfg.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == "no"
    assert cfg.instance_group
    for group in cfg.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    return text_format.MessageToString(cfg)


@pytest.fixture(scope="module")
def torch_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    root = tmp_path_factory.mktemp("torch_path")
    check_artifacts(REPOSITORY)
    repo = repository_copy(REPOSITORY, root / "repo")
    (repo / "ranker" / "configs" / "cpu.pbtxt").write_text(torch_profile_on_cpu())
    with run_server(ServerConfig(model_repository=repo, log_path=root / "server.log")) as server:
        yield server


@pytest.fixture(scope="module")
def torch_client(torch_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(torch_server.grpc_url)
    yield client
    client.close()


def a_request(seed: int, n: int) -> RankingRequest:
    rng = np.random.default_rng(seed)
    return RankingRequest(
        np.array([seed, 1, 2, 0], dtype=np.int64),
        rng.integers(0, 2000, 20).astype(np.int64),
        rng.integers(0, 2000, n).astype(np.int64),
        rng.integers(0, 8, (n, 3)).astype(np.int64),
    )


def assert_identical(got: RankingResult, want: RankingResult) -> None:
    assert got.route == want.route
    for name in ("top_ids", "top_scores", "scores"):
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_servers_run_the_two_paths(torch_server, triton_server, torch_client, grpc_client):
    """The torch server's ranker loaded the torch profile and torch itself; the NumPy one neither."""
    for client, library, force_cpu in ((torch_client, "torch", "no"), (grpc_client, "numpy", "yes")):
        cfg = client.get_model_config("ranker").config
        assert cfg.parameters["tensor_library"].string_value == library
        assert cfg.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"].string_value == force_cpu
        assert [g.kind for g in cfg.instance_group] == [mc.ModelInstanceGroup.KIND_CPU] * len(cfg.instance_group)
    for server, loaded in ((torch_server, True), (triton_server, False)):
        pids = stub_pids(server, "ranker")
        assert len(pids) == 2  # one stub per ranker instance
        for pid in pids:
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert ("libtorch_cpu.so" in maps) == loaded, f"ranker stub of {server.config.config_name}: torch {loaded}"


@pytest.mark.parametrize("route", ["light", "heavy", "cascade"])
@pytest.mark.parametrize(
    "n, seed, top_k",
    [(64, 1, None), (700, 2, 20), (1500, 3, 150)],
    ids=["n64", "n700-k20", "n1500-k-above-m"],  # 1500 > micro_batch: several scorer calls per tier
)
def test_fixed_routes_equal_numpy_path(torch_client, grpc_client, route, n, seed, top_k):
    request = a_request(seed, n)
    got = infer(torch_client, request, route=route, top_k=top_k)
    assert got.route == route
    assert_identical(got, infer(grpc_client, request, route=route, top_k=top_k))


@pytest.mark.parametrize("budget_ms, route", [(1e6, "heavy"), (1e-3, "light")], ids=["roomy", "tight"])
def test_auto_equals_numpy_path(torch_client, grpc_client, budget_ms, route):
    request = a_request(4, 900)
    got = infer(torch_client, request, route="auto", latency_budget_ms=budget_ms)
    assert got.route == route
    assert_identical(got, infer(grpc_client, request, route="auto", latency_budget_ms=budget_ms))


def test_auto_default_budget_equals_numpy_route_taken(torch_client, grpc_client):
    """With the default budget the route depends on each server's learned costs: the torch answer
    must equal the NumPy path's answer on the route the torch server took."""
    for seed in (5, 6):
        request = a_request(seed, 1200)
        got = infer(torch_client, request, route="auto", top_k=30)
        assert got.route in ("light", "heavy", "cascade")
        assert_identical(got, infer(grpc_client, request, route=got.route, top_k=30))


# --- bad inputs -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inprocess() -> InProcessRanker:
    return InProcessRanker(REPOSITORY)


def ranker_arrays(inprocess: InProcessRanker, seed: int, n: int = 40) -> dict[str, np.ndarray]:
    """The ranker's own inputs (what the ensemble hands it) for one request, from the same ONNX files."""
    inputs = inprocess.chain(a_request(seed, n).arrays()).ranker_inputs()
    return {**inputs, "candidate_ids": np.arange(n, dtype=np.int64)[None] * 3}  # (1, N)


def infer_ranker(client: grpcclient.InferenceServerClient, arrays: dict[str, np.ndarray], route: str) -> dict:
    """One request straight to the ranker model (not the ensemble), arrays sent as they are."""
    outputs = [grpcclient.InferRequestedOutput(name) for name in RANKER.output_names]
    response = client.infer("ranker", raw_inputs(arrays), outputs=outputs, parameters={"route": route})
    return {name: response.as_numpy(name) for name in RANKER.output_names}


def _nan(a: dict[str, np.ndarray]) -> None:
    a["candidate_emb"][0, 3, 1, 0] = np.nan


def _negative(a: dict[str, np.ndarray]) -> None:
    a["candidate_ids"][0, 7] = -4


def _short(a: dict[str, np.ndarray]) -> None:
    a["candidate_ids"] = a["candidate_ids"][:, :-1]


def _inf_state(a: dict[str, np.ndarray]) -> None:
    a["user_state"][0, 0] = -np.inf


def _zero_k(a: dict[str, np.ndarray]) -> None:
    a["top_k"] = np.array([[0]], dtype=np.int32)


@pytest.mark.parametrize(
    "mutate, name",
    [
        (_nan, "candidate_emb"),
        (_negative, "candidate_ids"),
        (_short, "candidate_ids"),
        (_inf_state, "user_state"),
        (_zero_k, "top_k"),
    ],
    ids=["nan-embedding", "negative-id", "n-mismatch", "inf-user-state", "top-k-zero"],
)
def test_bad_input_is_invalid_argument_naming_it(torch_client, grpc_client, inprocess, mutate, name):
    arrays = ranker_arrays(inprocess, 7)
    mutate(arrays)
    messages = []
    for client in (torch_client, grpc_client):
        with pytest.raises(InferenceServerException) as info:
            infer_ranker(client, arrays, "cascade")
        assert "INVALID_ARG" in str(info.value.status()), info.value
        assert f"'{name}'" in info.value.message()
        messages.append(info.value.message())
    assert messages[0] == messages[1]


def test_direct_ranker_answers_equal_and_survive_bad_requests(torch_client, grpc_client, inprocess):
    """After the bad requests above, the torch ranker still answers, as the NumPy one does."""
    arrays = ranker_arrays(inprocess, 8, n=600)
    for route in ("light", "cascade"):
        got, want = infer_ranker(torch_client, arrays, route), infer_ranker(grpc_client, arrays, route)
        assert got.keys() == want.keys()
        for key in got:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
