"""serving.server.launcher on a tiny Python-backend repository written by each test.

Independent of the project's models: one model ``add`` (SUM = A + B) whose model.py
imports onnxruntime and serving.contract (this project, installed into the venv), both of
which the stub only sees through the environment run_server builds.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from serving.contract import ENGINE_MODELS
from serving.server.launcher import (
    ADMIN_KEY_HEADER,
    GRPC_ADMIN_KEY_HEADER,
    ServerConfig,
    check_artifacts,
    run_server,
    server_command,
)

CONFIG = """
backend: "python"
max_batch_size: 0
input [
  { name: "A" data_type: TYPE_FP32 dims: [ -1 ] },
  { name: "B" data_type: TYPE_FP32 dims: [ -1 ] }
]
output [ { name: "SUM" data_type: TYPE_FP32 dims: [ -1 ] } ]
instance_group [ { kind: %s } ]
"""

MODEL_PY = """
import numpy as np
import onnxruntime  # noqa: F401
import triton_python_backend_utils as pb_utils

import serving.contract  # noqa: F401


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("SUM", (a + b).astype(np.float32))]))
        return responses
"""

BROKEN_MODEL_PY = 'raise ImportError("broken on purpose")\n'
ADMIN_KEY = "test-admin-key"


def write_repository(root: Path, model_py: str = MODEL_PY) -> Path:
    """root/add/{config.pbtxt, configs/cpu.pbtxt, 1/model.py}; only the cpu config loads without a GPU."""
    model = root / "add"
    (model / "1").mkdir(parents=True)
    (model / "configs").mkdir()
    (model / "config.pbtxt").write_text(CONFIG % "KIND_GPU")
    (model / "configs" / "cpu.pbtxt").write_text(CONFIG % "KIND_CPU")
    (model / "1" / "model.py").write_text(textwrap.dedent(model_py))
    return root


Client = httpclient.InferenceServerClient | grpcclient.InferenceServerClient


def infer(module: ModuleType, client: Client, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SUM from ``add`` via ``module`` (tritonclient.http or tritonclient.grpc)."""
    inputs = [module.InferInput("A", list(a.shape), "FP32"), module.InferInput("B", list(b.shape), "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    return client.infer("add", inputs).as_numpy("SUM")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_serves_http_and_grpc_then_stops_cleanly(tmp_path: Path) -> None:
    repository = write_repository(tmp_path / "repo")
    cfg = ServerConfig(model_repository=repository, log_path=tmp_path / "server.log", admin_key=ADMIN_KEY)
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    b = np.array([0.5, 0.5, -1.0], dtype=np.float32)
    with run_server(cfg) as server:
        http = httpclient.InferenceServerClient(server.http_url)
        grpc = grpcclient.InferenceServerClient(server.grpc_url)
        assert http.is_server_ready() and grpc.is_model_ready("add")
        np.testing.assert_allclose(infer(httpclient, http, a, b), a + b)
        np.testing.assert_allclose(infer(grpcclient, grpc, a, b), a + b)
        with pytest.raises(InferenceServerException, match="restricted"):
            http.get_model_repository_index()
        assert http.get_model_repository_index(headers={ADMIN_KEY_HEADER: ADMIN_KEY})[0]["state"] == "READY"
        assert grpc.get_model_repository_index(headers={GRPC_ADMIN_KEY_HEADER: ADMIN_KEY}).models[0].name == "add"
        http.close()
        grpc.close()
        process = server.process
    assert process.returncode == 0
    assert not group_alive(process.pid), "tritonserver or a Python stub outlived run_server"


def test_broken_model_raises_with_log_tail(tmp_path: Path) -> None:
    log_path = tmp_path / "server.log"
    cfg = ServerConfig(model_repository=write_repository(tmp_path / "repo", BROKEN_MODEL_PY), log_path=log_path)
    with pytest.raises(RuntimeError, match="exited") as excinfo:
        with run_server(cfg):
            pytest.fail("a repository with a broken model.py became ready")
    assert str(log_path) in str(excinfo.value)
    assert "broken on purpose" in str(excinfo.value)


@pytest.mark.parametrize(
    ("present", "missing"),
    [((), tuple(ENGINE_MODELS)), (tuple(ENGINE_MODELS)[:2], tuple(ENGINE_MODELS)[2:]), (tuple(ENGINE_MODELS), ())],
    ids=["empty", "partial", "complete"],
)
def test_check_artifacts(tmp_path: Path, present: tuple[str, ...], missing: tuple[str, ...]) -> None:
    for name in present:
        (tmp_path / name / "1").mkdir(parents=True)
        (tmp_path / name / "1" / "model.onnx").write_bytes(b"")
    if not missing:
        check_artifacts(tmp_path)
        return
    with pytest.raises(FileNotFoundError, match="run `make export`") as excinfo:
        check_artifacts(tmp_path)
    assert all(name in str(excinfo.value) for name in missing)
    assert not any(name in str(excinfo.value) for name in present)


@pytest.mark.parametrize(
    ("cfg", "expected", "absent"),
    [
        (ServerConfig(Path("r")), ["--model-config-name=cpu", "--metrics-address=127.0.0.1"], ["--http-restricted"]),
        (ServerConfig(Path("r"), config_name=None), [], ["--model-config-name"]),
        (
            ServerConfig(Path("r"), admin_key="k"),
            [
                "--http-restricted-api=model-repository,shared-memory,logging,trace:admin-key=k",
                "--grpc-restricted-protocol=model-repository,shared-memory,logging,trace:admin-key=k",
            ],
            [],
        ),
    ],
    ids=["default", "no-config-name", "admin-key"],
)
def test_server_command(cfg: ServerConfig, expected: list[str], absent: list[str]) -> None:
    cmd = server_command(cfg, Path("backends"))
    assert all(flag in cmd for flag in expected)
    assert not any(arg.startswith(prefix) for arg in cmd for prefix in absent)
