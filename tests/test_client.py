"""The tritonclient command line and library (client/cli.py and the modules it drives) against the real server.

``main([...])`` runs in-process: its ``--json`` output is parsed and compared with the
library's answer to the same request (ranking_client.infer); errors are checked by exit
code, by being one line on stderr and, where Triton answered, by carrying Triton's own
message. The session server of conftest.py sets no admin key, so its shared-memory API is
open; ``keyed_server`` below starts one the way ``make serve`` does, with a key.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.async_client import infer_many, summarize
from client.cli import EXIT_ERROR, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, main
from client.ranking_client import RankingRequest, infer
from client.request_file import RequestFileError, load_request, request_to_json
from client.shared_memory import SharedMemoryError, admin_headers, cuda_shared_memory_module, infer_shared_memory
from export.config import PRESETS
from export.world import World, make_world
from serving.contract import RankingResult
from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, free_port, run_server

PROTOCOLS = ("grpc", "http")
RTOL, ATOL = 1e-5, 1e-6  # as tests/test_serving.py: the same server may block sums differently per call
ADMIN_KEY = "test-admin-key"
SHM_DIR = Path("/dev/shm")


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(PRESETS["tiny"].world)


@pytest.fixture(scope="module")
def request_(world: World) -> RankingRequest:
    return RankingRequest.from_requests(world.sample_requests(1, 300, 5), 0)


@pytest.fixture
def request_file(tmp_path: Path, request_: RankingRequest) -> Path:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request_to_json(request_)))
    return path


@pytest.fixture(scope="module")
def keyed_server() -> Iterator[RunningServer]:
    """A second server whose shared-memory API needs ADMIN_KEY (as ``make serve`` starts it)."""
    cfg = ServerConfig(model_repository=REPO_ROOT / "model_repository", admin_key=ADMIN_KEY, stop_timeout_s=10)
    with run_server(cfg) as server:
        yield server


def url(server: RunningServer, protocol: str) -> str:
    return server.grpc_url if protocol == "grpc" else server.http_url


def client_for(server: RunningServer, protocol: str) -> object:
    module = grpcclient if protocol == "grpc" else httpclient
    return module.InferenceServerClient(url(server, protocol))


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict | None, str]:
    """Exit code, parsed ``--json`` stdout (None when empty) and stderr of ``python -m client *args``."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


def assert_one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def assert_same(cli: dict, want: RankingResult) -> None:
    assert cli["route"] == want.route
    assert cli["n_candidates"] == want.scores.size
    np.testing.assert_array_equal(cli["top_ids"], want.top_ids)
    np.testing.assert_allclose(cli["top_scores"], want.top_scores, rtol=RTOL, atol=ATOL)


def assert_results_equal(got: RankingResult, want: RankingResult) -> None:
    assert got.route == want.route
    np.testing.assert_array_equal(got.top_ids, want.top_ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got.top_scores, want.top_scores, rtol=RTOL, atol=ATOL)


def no_regions_left(client: object, admin_key: str | None = None) -> bool:
    """Nothing registered on the server, no region of ours left in /dev/shm."""
    headers = admin_headers(client, admin_key)
    if isinstance(client, grpcclient.InferenceServerClient):
        registered = client.get_system_shared_memory_status(headers=headers, as_json=True).get("regions", {})
    else:
        registered = client.get_system_shared_memory_status(headers=headers)
    return not registered and not list(SHM_DIR.glob("adaptive_ranking_*"))


def assert_no_cleanup_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Every region was unregistered and destroyed at the first try or within the retries."""
    assert not [r.getMessage() for r in caplog.records if r.name == "client.shared_memory"]


# --- one request: JSON file, world --------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cli_request_file(capsys, triton_server, grpc_client, request_, request_file, protocol):
    code, out, err = run_cli(
        capsys, "--request", str(request_file), "--url", url(triton_server, protocol), "--protocol", protocol,
        "--route", "cascade", "--top-k", "7", "--json",
    )
    assert code == EXIT_OK, err
    assert out["requested_route"] == "cascade" and out["protocol"] == protocol
    assert_same(out, infer(grpc_client, request_, route="cascade", top_k=7))


@pytest.mark.parametrize("output", ["json", "table"])
def test_cli_world_request(capsys, triton_server, grpc_client, world, output):
    args = ["--world-preset", "tiny", "--seed", "3", "--candidates", "100", "--url", triton_server.grpc_url]
    args += ["--route", "light", "--latency-budget-ms", "50"]
    if output == "table":  # the human-readable form: only that it is printed
        assert main(args) == EXIT_OK
        assert capsys.readouterr().out.strip()
        return
    code, out, err = run_cli(capsys, *args, "--json")
    assert code == EXIT_OK, err
    request = RankingRequest.from_requests(world.sample_requests(1, 100, 3), 0)
    assert_same(out, infer(grpc_client, request, route="light"))


def test_request_file_round_trip(request_, request_file):
    loaded = load_request(request_file)
    for name, array in request_.fields().items():
        np.testing.assert_array_equal(getattr(loaded, name), array)
        assert getattr(loaded, name).dtype == np.int64


# --- shared memory ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_equals_plain(capsys, caplog, triton_server, request_, request_file, protocol):
    client = client_for(triton_server, protocol)
    try:
        for route in ("light", "heavy", "cascade") * 3:
            plain = infer(client, request_, route=route, top_k=20)
            shm = infer_shared_memory(client, request_, "system", route=route, top_k=20)
            assert_results_equal(shm, plain)
        assert no_regions_left(client)
        common = ["--request", str(request_file), "--url", url(triton_server, protocol), "--protocol", protocol]
        code, out, err = run_cli(capsys, *common, "--shared-memory", "system", "--route", "heavy", "--json")
        assert code == EXIT_OK, err
        assert out["shared_memory"] == "system"
        assert_same(out, infer(client, request_, route="heavy"))
        assert no_regions_left(client)
        assert_no_cleanup_warnings(caplog)
    finally:
        client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_memory_admin_key(capsys, caplog, monkeypatch, keyed_server, request_, request_file, protocol):
    client = client_for(keyed_server, protocol)
    try:
        with pytest.raises(SharedMemoryError, match="restricted"):
            infer_shared_memory(client, request_, "system", route="light")
        assert not list(SHM_DIR.glob("adaptive_ranking_*"))  # (the server's status API needs the key too)
        with_key = infer_shared_memory(client, request_, "system", admin_key=ADMIN_KEY, route="light")
        assert_results_equal(with_key, infer(client, request_, route="light"))

        common = ["--request", str(request_file), "--url", url(keyed_server, protocol), "--protocol", protocol]
        monkeypatch.delenv("TRITON_ADMIN_KEY", raising=False)
        code, _, err = run_cli(capsys, *common, "--shared-memory", "system", "--json")
        assert code == EXIT_ERROR
        assert_one_line_error(err)
        monkeypatch.setenv("TRITON_ADMIN_KEY", ADMIN_KEY)  # the default of --admin-key
        code, out, err = run_cli(capsys, *common, "--shared-memory", "system", "--route", "light", "--json")
        assert code == EXIT_OK, err
        assert_same(out, with_key)
        assert no_regions_left(client, ADMIN_KEY)
        assert_no_cleanup_warnings(caplog)
    finally:
        client.close()


def cuda_available() -> bool:
    try:
        cuda_shared_memory_module()
    except SharedMemoryError:
        return False
    return True


def test_cuda_shared_memory_fails_clearly_without_cuda(capsys, triton_server, grpc_client, request_):
    if cuda_available():
        pytest.skip("a CUDA device is available: CUDA shared memory does not fail here")
    with pytest.raises(SharedMemoryError, match="CUDA"):
        infer_shared_memory(grpc_client, request_, "cuda")
    code, _, err = run_cli(capsys, "--world-preset", "tiny", "--url", triton_server.grpc_url, "--shared-memory", "cuda")
    assert code == EXIT_ERROR
    assert "CUDA" in assert_one_line_error(err)


# --- asyncio: many requests ---------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_many_equals_sequential(triton_server, grpc_client, world, protocol):
    batch = world.sample_requests(50, 64, 40)
    requests = [RankingRequest.from_requests(batch, row) for row in range(50)]
    outcomes = asyncio.run(
        infer_many(url(triton_server, protocol), requests, protocol, concurrency=8, timeout_s=60, route="cascade")
    )
    assert [o.index for o in outcomes] == list(range(50))
    assert all(o.ok and o.latency_s > 0 for o in outcomes), [o.error for o in outcomes if not o.ok]
    for request, outcome in zip(requests, outcomes, strict=True):
        assert_results_equal(outcome.result, infer(grpc_client, request, route="cascade"))
    summary = summarize(outcomes, wall_s=1.0)
    assert (summary.count, summary.answered, summary.errors, summary.routes) == (50, 50, 0, {"cascade": 50})
    assert summary.p50_ms <= summary.p99_ms and summary.candidates_per_s == 50 * 64


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_many_timeout_is_an_error_entry(triton_server, request_, protocol):
    outcomes = asyncio.run(infer_many(url(triton_server, protocol), [request_] * 4, protocol, timeout_s=1e-4))
    assert len(outcomes) == 4
    assert all(not o.ok and o.timed_out and o.result is None for o in outcomes)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_infer_many_keeps_going_after_an_error(triton_server, world, protocol):
    batch = world.sample_requests(6, 32, 41)
    requests = [RankingRequest.from_requests(batch, row).arrays() for row in range(6)]
    requests[2] = {**requests[2], "candidate_ids": -requests[2]["candidate_ids"] - 1}  # negative ids
    outcomes = asyncio.run(infer_many(url(triton_server, protocol), requests, protocol, concurrency=3))
    assert [o.ok for o in outcomes] == [True, True, False, True, True, True]
    assert isinstance(outcomes[2].error, InferenceServerException)
    assert "candidate_ids" in outcomes[2].error.message() and not outcomes[2].timed_out


def test_cli_count_summary(capsys, triton_server):
    code, out, err = run_cli(
        capsys, "--world-preset", "tiny", "--candidates", "32", "--count", "20", "--concurrency", "4",
        "--url", triton_server.http_url, "--protocol", "http", "--route", "light", "--json",
    )
    assert code == EXIT_OK, err
    assert (out["count"], out["answered"], out["errors"], out["concurrency"]) == (20, 20, 0, 4)
    assert out["routes"] == {"light": 20} and out["p50_ms"] <= out["p99_ms"] and out["candidates_per_s"] > 0


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [None, "3"], ids=["single", "count"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_down(capsys, protocol, count):
    dead = f"127.0.0.1:{free_port()}"  # nobody listens there
    args = ["--world-preset", "tiny", "--url", dead, "--protocol", protocol] + (["--count", count] if count else [])
    code, out, err = run_cli(capsys, *args)
    assert code == EXIT_UNREACHABLE and out is None
    assert dead in assert_one_line_error(err)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_server_error_shows_tritons_message(capsys, triton_server, request_, request_file, protocol):
    client = client_for(triton_server, protocol)
    try:
        with pytest.raises(InferenceServerException) as info:
            infer(client, request_, route="bogus")
    finally:
        client.close()
    args = ["--request", str(request_file), "--url", url(triton_server, protocol), "--protocol", protocol]
    code, out, err = run_cli(capsys, *args, "--route", "bogus", "--json")
    assert code == EXIT_ERROR and out is None
    assert info.value.message() in assert_one_line_error(err)


def test_client_timeout_single_request(capsys, triton_server):
    args = ["--world-preset", "tiny", "--url", triton_server.grpc_url, "--timeout", "0.0001", "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == EXIT_ERROR and out is None
    assert_one_line_error(err)


def _edit(**changes: object) -> dict:
    base = {
        "user_features": [3, 1, 2, 0],
        "history_ids": [5, 6, 7],
        "candidate_ids": [10, 11],
        "candidate_features": [[1, 2, 3], [4, 5, 6]],
    }
    return {k: v for k, v in {**base, **changes}.items() if v is not None}


BAD_FILES = {  # id: (file text, regex the error must match: the offending key)
    "missing-key": (_edit(history_ids=None), "history_ids"),
    "unknown-key": (_edit(candidate_idz=[1]), "candidate_idz"),
    "scalar": (_edit(candidate_ids=7), "candidate_ids"),
    "string": (_edit(user_features="3,1,2,0"), "user_features"),
    "ragged": (_edit(candidate_features=[[1, 2, 3], [4, 5]]), "candidate_features"),
    "floats": (_edit(candidate_ids=[10.5, 11]), "candidate_ids"),
    "booleans": (_edit(history_ids=[True, False]), "history_ids"),
    "beyond-int64": (_edit(candidate_ids=[2**64, 1]), "candidate_ids"),
    "feature-width": (_edit(candidate_features=[[1, 2], [4, 5]]), "candidate_features"),
    "flat-features": (_edit(candidate_features=[1, 2, 3, 4, 5, 6]), "candidate_features"),
    "n-mismatch": (_edit(candidate_ids=[10, 11, 12]), "candidate_features.*candidate_ids"),
    "user-features-length": (_edit(user_features=[3, 1, 2]), "user_features"),
    "empty-history": (_edit(history_ids=[]), "history_ids"),
    "negative-id": (_edit(history_ids=[5, -6]), "history_ids"),
    "not-an-object": ([1, 2, 3], "JSON object"),
    "not-json": ('{"user_features": [3, 1, 2, 0],', "not valid JSON"),
}


@pytest.mark.parametrize("text, names", list(BAD_FILES.values()), ids=list(BAD_FILES))
def test_bad_request_file_names_the_key(capsys, tmp_path, text, names):
    path = tmp_path / "bad.json"
    path.write_text(text if isinstance(text, str) else json.dumps(text))
    with pytest.raises(RequestFileError, match=names):
        load_request(path)
    code, out, err = run_cli(capsys, "--request", str(path), "--url", f"127.0.0.1:{free_port()}")
    assert code == EXIT_USAGE and out is None  # rejected before anything is sent
    assert_one_line_error(err)


def test_good_base_file_loads(tmp_path):
    path = tmp_path / "good.json"
    path.write_text(json.dumps(_edit()))
    assert load_request(path).candidate_features.shape == (2, 3)


@pytest.mark.parametrize(
    "args",
    [["--concurrency", "4"], ["--count", "3", "--shared-memory", "system"], ["--timeout", "0"], ["--count", "0"],
     ["--request", "r.json", "--world-preset", "tiny"]],
    ids=["concurrency-without-count", "count-with-shm", "zero-timeout", "zero-count", "two-sources"],
)
def test_usage_errors(capsys, args):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == EXIT_USAGE
