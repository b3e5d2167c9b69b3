"""The one server fixture: the real Triton server on the project's model repository.

It serves ``configs/cpu.pbtxt`` of every model on free ports for the whole session.
Missing ONNX artifacts fail the tests that use it with a message naming ``make export``;
nothing is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, check_artifacts, run_server


@pytest.fixture(scope="session")
def triton_server() -> Iterator[RunningServer]:
    repository = REPO_ROOT / "model_repository"
    check_artifacts(repository)
    with run_server(ServerConfig(model_repository=repository, config_name="cpu")) as server:
        yield server


@pytest.fixture(scope="session")
def grpc_client(triton_server: RunningServer) -> Iterator[grpcclient.InferenceServerClient]:
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def http_client(triton_server: RunningServer) -> Iterator[httpclient.InferenceServerClient]:
    client = httpclient.InferenceServerClient(triton_server.http_url)
    yield client
    client.close()
