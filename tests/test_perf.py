"""perf/: input JSON, CSV parsing, targets, and a short real perf_analyzer sweep against the server.

Unit tests use tiny hand-written inputs (a CSV in perf_analyzer's format, a summary);
the integration test runs perf/sweep.py's ``sweep`` with a one-N, two-route config on
the session's Triton server, then writes summary.json, the plots and the report from
its files. No timing is asserted: only that the pipeline produces well-formed files.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from export.config import PRESETS
from export.world import make_world
from perf.analyzer import Job, Window, bls_composing, concurrency_range
from perf.bursts import BurstsConfig, with_queue_policy
from perf.bursts import run as run_bursts
from perf.capacity import PROFILES as CAPACITY_PROFILES
from perf.capacity import auto_under_load, open_loop_rates, saturation
from perf.ceiling import measure_routes
from perf.inputs import input_data, tensor_entry, tiled, world_requests, write_inputs
from perf.parse import parse_composing, parse_csv, parse_csv_text, parse_rate_csv, parse_rate_csv_text, row_at
from perf.plots import write_plots
from perf.report import write_report
from perf.repository import read_config, unbatched_copy
from perf.stub_profile import STAT_PARTS, ProfileConfig, breakdown, markdown, profile, top_frames
from perf.summary import check_schema, write_summary
from perf.sweep import SweepConfig, _baseline, exported_preset, finish, sweep
from perf.targets import MET, MISSED, NOT_MEASURED, capacity_targets, evaluate_targets
from serving.contract import ADAPTIVE_RANKING, F_C, F_U, PER_CANDIDATE_BASELINE
from serving.server.launcher import REPO_ROOT, RunningServer

# perf_analyzer -f output (rows sorted by throughput, latencies in usec), with --verbose-csv's extra columns.
PA_CSV = """\
Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,\
request/response,response wait
1,168.308,9,1124,2,87,4159,531,6,4644,9488,11960,17792,9,4600
3,190.5,17,14435,3,165,8845,706,11,21125,35719,40083,74999,28,24111
2,183.115,13,5308,2,101,4957,499,6,9660,16200,19859,28137,13,9600
"""

PA_STDOUT = """\
Request concurrency: 1
  Client:
    p50 latency: 4644 usec
  Server:
    Avg request latency: 7502 usec (overhead 0 usec + queue 1974 usec + compute 5560 usec)
  Composing models:
  ranker, version: 1
      Inference count: 10
      Avg request latency: 5136 usec (overhead 2 usec + queue 1543 usec + compute input 32 usec + compute infer 3228 usec + compute output 330 usec)
  scorer_heavy, version: 1
      Avg request latency: 1186 usec (overhead 3 usec + queue 137 usec + compute input 44 usec + compute infer 927 usec + compute output 73 usec)
"""  # noqa: E501


def test_parse_csv_sorts_by_concurrency_in_ms(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    path.write_text(PA_CSV)
    rows = parse_csv(path)
    assert [r.concurrency for r in rows] == [1, 2, 3]
    first = row_at(rows, 1)
    assert first is not None
    assert first.infer_per_s == pytest.approx(168.308)
    assert (first.p50_ms, first.p90_ms, first.p95_ms, first.p99_ms) == pytest.approx((4.644, 9.488, 11.96, 17.792))
    assert first.compute_infer_ms == pytest.approx(4.159)
    assert row_at(rows, 4) is None


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("Concurrency,Inferences/Second,p50 latency\n1,2.0,3\n", "missing columns"),
        ("Concurrency,Inferences/Second,p50 latency,p90 latency,p95 latency,p99 latency\n1,x,1,2,3,4\n", "line 2"),
    ],
    ids=["missing-percentiles", "bad-value"],
)
def test_parse_csv_rejects(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_csv_text(text, "bad.csv")


def test_parse_composing_reads_model_breakdown() -> None:
    models = parse_composing(PA_STDOUT)[1]
    assert set(models) == {"ranker", "scorer_heavy"}
    assert models["ranker"]["latency_ms"] == pytest.approx(5.136)
    assert models["ranker"]["queue_ms"] == pytest.approx(1.543)
    assert models["scorer_heavy"]["compute_infer_ms"] == pytest.approx(0.927)


@pytest.mark.parametrize(
    ("levels", "expected"), [((1,), "1"), ((1, 2, 3, 4), "1:4:1"), ((1, 3, 5), "1:5:2")], ids=["one", "step1", "step2"]
)
def test_concurrency_range(levels: tuple[int, ...], expected: str) -> None:
    assert concurrency_range(levels) == expected


def test_concurrency_range_rejects_uneven() -> None:
    with pytest.raises(ValueError, match="evenly spaced"):
        concurrency_range((1, 2, 4))


@pytest.mark.parametrize(
    ("array", "dtype", "content"),
    [
        (np.array([[1, 2], [3, 4]], dtype=np.int64), "INT64", [1, 2, 3, 4]),
        (np.array([1.0, 2.5], dtype=np.float32), "FP32", [1.0, 2.5]),
    ],
    ids=["int64", "fp32"],
)
def test_tensor_entry_shape_and_json_types(array: np.ndarray, dtype: str, content: list) -> None:
    entry = tensor_entry(array, dtype)
    assert entry == {"content": content, "shape": list(array.shape)}
    element = type(content[0])
    assert all(type(v) is element for v in entry["content"])  # JSON 1 vs 1.0 matters to perf_analyzer
    assert ("1.0" in json.dumps(entry)) == (dtype == "FP32")


def test_input_files_have_explicit_shapes(tmp_path: Path) -> None:
    world = make_world(PRESETS["tiny"].world)
    files = write_inputs(world, (16,), 3, tmp_path)[16]
    ranking = json.loads(files.ranking.read_text())["data"]
    baseline = json.loads(files.baseline.read_text())["data"]
    assert len(ranking) == len(baseline) == 3
    assert len({json.dumps(r["candidate_ids"]) for r in ranking}) == 3  # distinct requests
    for req, base in zip(ranking, baseline):
        assert set(req) == set(ADAPTIVE_RANKING.input_names) - {"top_k"}
        assert set(base) == set(PER_CANDIDATE_BASELINE.input_names)
        for entry in (*req.values(), *base.values()):
            assert len(entry["content"]) == int(np.prod(entry["shape"]))
            assert all(type(v) is int and v >= 0 for v in entry["content"])
        hist = req["history_ids"]["shape"][1]  # one user: [1, L]
        assert req["user_features"]["shape"] == [1, F_U]
        assert req["candidate_features"]["shape"] == [1, 16, F_C]
        assert base["user_features"]["shape"] == [16, F_U]
        assert base["history_ids"]["shape"] == [16, hist]
        assert base["history_ids"]["content"][:hist] == req["history_ids"]["content"]


def test_input_data_rejects_wrong_dtype() -> None:
    request = world_requests(make_world(PRESETS["tiny"].world), 4, 1)[0][0]
    arrays = {**tiled(request), "candidate_ids": request.candidate_ids.astype(np.int32)}
    with pytest.raises(ValueError, match="candidate_ids"):
        input_data(PER_CANDIDATE_BASELINE, [arrays])


def _summary(baseline_1024: float | None, cascade_ms: float) -> dict:
    return {
        "hardware": "test CPU, 2 cores",
        "scaling": {"n": [64, 1024, 4096], "auto_p50_ms": [2.0, 4.0, 10.0], "heavy_p50_ms": [2.0, 8.0, 20.0],
                    "baseline_p50_ms": [10.0, baseline_1024, None]},
        "routes": {"heavy": {"ndcg10": 0.80, "p50_ms": 10.0}, "cascade": {"ndcg10": 0.796, "p50_ms": cascade_ms}},
        "overhead": {"served_p50_ms": 3.0, "inprocess_p50_ms": 2.5},
        "throughput": [],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("summary", "route_n", "expected"),
    [
        (_summary(400.0, 3.0), 1024, [MET, MET, MET, MET, MET]),
        (_summary(100.0, 5.0), 1024, [MISSED, MET, MET, MISSED, MET]),
        (_summary(None, 3.0), 64, [NOT_MEASURED, MET, NOT_MEASURED, NOT_MEASURED, NOT_MEASURED]),
    ],
    ids=["all-met", "misses-shown", "not-measured"],
)
def test_targets(summary: dict, route_n: int, expected: list[str]) -> None:
    check_schema(summary)
    assert [t.status for t in evaluate_targets(summary, route_n)] == expected


def test_short_sweep_against_server(triton_server: RunningServer, tmp_path: Path) -> None:
    cfg = SweepConfig(
        ns=(16,),
        routes=("auto", "heavy"),
        concurrency=(1,),
        window=Window(interval_ms=300, request_count=5, stability_pct=100, max_trials=4, retry_stability_pct=(300,)),
        requests_per_file=2,
        ndcg_requests=2,
        inprocess_repeats=3,
    )
    manifest = sweep(triton_server, cfg, exported_preset(), tmp_path)
    finish(manifest, cfg, "test", REPO_ROOT / "model_repository", tmp_path, start=0.0)

    runs = {r["name"]: r for r in manifest["runs"]}
    assert set(runs) == {"auto-n16", "heavy-n16", "baseline-n16"}
    heavy = [row for csv in runs["heavy-n16"]["csv"] for row in parse_csv(tmp_path / csv)]
    assert [r.concurrency for r in heavy] == [1] and heavy[0].p50_ms > 0
    # The ensemble's steps; the CPU profile's ranker runs scorer_heavy's graph itself (no BLS model).
    assert set(runs["heavy-n16"]["composing"]["1"]) == {"embedding_lookup", "user_tower", "ranker"}

    summary = write_summary(tmp_path)
    check_schema(summary)
    assert summary["scaling"]["n"] == [16]
    assert summary["routes"]["heavy"]["p50_ms"] == pytest.approx(heavy[0].p50_ms, abs=1e-3)
    assert 0.0 <= summary["routes"]["auto"]["ndcg10"] <= 1.0
    for path in write_plots(tmp_path):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Targets" in write_report(tmp_path).read_text()


def test_baseline_over_cap_is_skipped_with_reason(triton_server: RunningServer, tmp_path: Path) -> None:
    world = make_world(PRESETS[exported_preset()].world)
    client = grpcclient.InferenceServerClient(triton_server.grpc_url)
    runs: list[dict] = []
    skipped: list[dict] = []
    try:
        probed = world_requests(world, 16, 1)[0][0]
        cfg = SweepConfig(baseline_cap_ms=1e-3)  # any real request is slower
        last = _baseline(client, triton_server, cfg, tmp_path, tmp_path / "unused.json", probed, None, runs, skipped)
        assert last is not None and last[0] == 16
        estimated = world_requests(world, 64, 1)[0][0]
        cfg = SweepConfig(baseline_cap_ms=3.9)  # 1 ms at N=16 scales to 4 ms at N=64: skipped without a request
        _baseline(client, triton_server, cfg, tmp_path, tmp_path / "unused.json", estimated, (16, 1.0), runs, skipped)
    finally:
        client.close()
    assert runs == []
    assert [s["n"] for s in skipped] == [16, 64]
    assert "measured" in skipped[0]["reason"] and "estimated 4 ms" in skipped[1]["reason"]


# --- stub profile (perf/stub_profile.py) -----------------------------------------------------------


def test_top_frames_counts_each_frame_once_per_stack() -> None:
    raw = "a (x.py:1);b (x.py:2);b (x.py:2) 3\na (x.py:1);c (y.py:9) 1\nnot a sample line\n"
    total, frames = top_frames(raw)
    assert total == 4
    assert dict(frames) == {"a (x.py:1)": 4, "b (x.py:2)": 3, "c (y.py:9)": 1}


def test_breakdown_averages_per_call_over_the_window() -> None:
    before = {"ranker": {"success": (10, 10_000_000), "queue": (10, 0), "compute_input": (10, 0),
                         "compute_infer": (10, 5_000_000), "compute_output": (10, 0)}}  # fmt: skip
    after = {"ranker": {"success": (14, 26_000_000), "queue": (14, 2_000_000), "compute_input": (14, 0),
                        "compute_infer": (14, 13_000_000), "compute_output": (14, 400_000)},
             "idle": {p: (0, 0) for p in ("success", *STAT_PARTS)}}  # fmt: skip
    rows = breakdown(before, after, requests=2)
    assert set(rows) == {"ranker"}  # a model not called in the window is left out
    assert rows["ranker"]["calls_per_request"] == 2.0
    assert rows["ranker"]["total_ms"] == pytest.approx(4.0)
    assert rows["ranker"]["compute_infer_ms"] == pytest.approx(2.0)
    assert rows["ranker"]["compute_output_ms"] == pytest.approx(0.1)


def test_bls_composing_follows_the_servers_scorer_calls(triton_server: RunningServer) -> None:
    """perf_analyzer fails on a --bls-composing-models model that serves nothing: the CPU profile's
    ranker calls no scorer model, so none is listed (tests/test_faults.py checks the BLS server's)."""
    for route in ("light", "heavy", "cascade", "auto"):
        assert bls_composing(Job("x", "adaptive_ranking", Path("in.json"), route=route), triton_server.grpc_url) == ()


def test_stub_profile_against_server(triton_server: RunningServer, tmp_path: Path) -> None:
    cfg = ProfileConfig(route="light", n=16, seconds=1, window_requests=5)
    result = profile(triton_server, cfg, exported_preset(), tmp_path)
    models = result["models"]
    for model in ("adaptive_ranking", "embedding_lookup", "user_tower", "ranker"):
        assert models[model]["calls_per_request"] == pytest.approx(1.0), model
    # The CPU profile's ranker runs the scorer graphs itself: no request reaches the scorer models.
    assert "scorer_light" not in models and "scorer_heavy" not in models
    total = {m: row["total_ms"] for m, row in models.items()}
    assert 0 < total["ranker"] < total["adaptive_ranking"]  # a step of the ensemble
    ranker = result["stubs"]["ranker"]
    assert ranker is not None and ranker["samples"] > 0, "py-spy could not record the ranker's stub"
    assert (tmp_path / "ranker.raw.txt").is_file()
    assert "| ranker | 1.0 |" in markdown(result)


# --- perf/capacity.py: ceiling, saturation, open loop ------------------------------------------------

RATE_CSV = """\
Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,\
Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency
500,480.581,20,60261,2,953,31675,4776,4,70865,214886,265308,331174
100,94.703,16,6908,3,186,9030,881,5,12590,30626,38430,60212
"""


def test_parse_rate_csv_in_ms_by_offered_rate(tmp_path: Path) -> None:
    path = tmp_path / "rate.csv"
    path.write_text(RATE_CSV.splitlines()[0] + "\n" + RATE_CSV)  # perf_analyzer may repeat its header
    rows = parse_rate_csv(path)
    assert [r.offered_per_s for r in rows] == [100.0, 500.0]
    assert rows[1].infer_per_s == pytest.approx(480.581) and rows[1].p99_ms == pytest.approx(331.174)


def test_parse_rate_csv_rejects_a_concurrency_csv() -> None:
    with pytest.raises(ValueError, match="not a perf_analyzer request-rate CSV"):
        parse_rate_csv_text(PA_CSV, "pa.csv")


def _capacity(heavy_batched: float, auto_p99: float) -> dict:
    def sat(c1: float, per_s: float) -> dict:
        return {"p50_c1_ms": c1, "saturation_per_s": per_s, "saturation_p99_ms": 40.0, "mean_batch_size": {}}

    return {
        "ceiling": {"light": 3000.0, "heavy": 1000.0, "cascade": 2000.0},
        "saturation": {
            "batched": {"light": sat(4.1, 2.6 * heavy_batched), "heavy": sat(6.2, heavy_batched),
                        "cascade": sat(5.0, 1.9 * heavy_batched)},
            "unbatched": {"light": sat(4.0, 300.0), "heavy": sat(6.0, 150.0), "cascade": sat(5.0, 200.0)},
        },
        "open_loop": {},
        "auto_open_loop": [{"load": 1.5, "route": "auto", "p99_ms": auto_p99, "miss_rate": 0.005, "errors": 0}],
    }  # fmt: skip


@pytest.mark.parametrize(
    ("heavy", "auto_p99", "expected"),
    [(600.0, 40.0, [MET] * 8), (400.0, 80.0, [MISSED, MISSED, MET, MET, MET, MISSED, MET, MET])],
    ids=["all-met", "misses-shown"],
)
def test_capacity_targets(heavy: float, auto_p99: float, expected: list[str]) -> None:
    summary = {**_summary(400.0, 3.0), **_capacity(heavy, auto_p99)}
    check_schema(summary)
    assert [t.status for t in capacity_targets(summary)] == expected
    assert len(evaluate_targets(summary, 1024)) == 5 + 8


def test_unbatched_copy_changes_only_the_batch_size(tmp_path: Path) -> None:
    repo = REPO_ROOT / "model_repository"
    copy = unbatched_copy(repo, tmp_path / "repo")
    for path in sorted(repo.glob("*/configs/cpu.pbtxt")) + sorted(repo.glob("*/config.pbtxt")):
        original, changed = read_config(path), read_config(copy / path.relative_to(repo))
        assert changed.max_batch_size == min(original.max_batch_size, 1)
        changed.max_batch_size = original.max_batch_size
        assert changed == original, path


def test_queue_policy_copy_bounds_only_the_batched_models(tmp_path: Path) -> None:
    repo = REPO_ROOT / "model_repository"
    copy = with_queue_policy(repo, tmp_path / "repo", max_queue_size=7, timeout_us=9)
    for path in sorted(repo.glob("*/configs/cpu.pbtxt")) + sorted(repo.glob("*/config.pbtxt")):
        original, changed = read_config(path), read_config(copy / path.relative_to(repo))
        policy = changed.dynamic_batching.default_queue_policy
        if original.max_batch_size > 0:
            assert (policy.max_queue_size, policy.default_timeout_microseconds) == (7, 9), path
            changed.dynamic_batching.ClearField("default_queue_policy")
        assert changed == original, path


def test_bursts_against_both_servers() -> None:
    """perf/bursts.py end to end on the exported preset: both variants served every burst (no timing asserted)."""
    out = run_bursts(REPO_ROOT / "model_repository", BurstsConfig(bursts=2, size=4, n=64, preset=exported_preset()))
    for label in ("as_shipped", "queue_policy"):
        assert out[label]["bursts"] == 2 and out[label]["median_ms"] > 0, out


def test_capacity_pieces_against_server(triton_server: RunningServer, tmp_path: Path) -> None:
    """Saturation, the open-loop rates and auto under load against the session's server on the smoke
    profile, then summary, plots and report from a capacity.json built of them (no timing asserted)."""
    cfg = CAPACITY_PROFILES["smoke"]
    preset = exported_preset()
    files = write_inputs(make_world(PRESETS[preset].world), (cfg.n,), cfg.requests_per_file, tmp_path / "inputs")
    inputs = files[cfg.n].ranking
    batched = saturation(triton_server, cfg, inputs, tmp_path, "batched")
    assert set(batched) == {"light", "heavy", "cascade"}
    assert all(e["saturation_per_s"] and e["p50_c1_ms"] for e in batched.values())
    assert batched["heavy"]["batches"]["ranker"]["mean_batch_size"] is not None
    assert batched["heavy"]["batches"]["scorer_heavy"]["mean_batch_size"] is None  # in the ranker's process
    rates = open_loop_rates(triton_server, cfg, inputs, tmp_path, batched)
    assert all(len(entry["points"]) == len(cfg.rate_fractions) for entry in rates.values())
    auto = auto_under_load(triton_server, cfg, preset, batched["heavy"]["saturation_per_s"])
    assert {q["route"] for q in auto} == {"auto", "light", "heavy", "cascade"}
    assert all(q["answered"] + q["errors"] == q["sent"] for q in auto)
    ceiling = measure_routes(REPO_ROOT / "model_repository", preset, cfg.n, 0.3, threads=1)
    capacity = {
        "ceiling": {r: c.as_dict() for r, c in ceiling.items()},
        "batched": batched, "unbatched": batched, "batched_bls": batched, "open_loop": rates, "auto_open_loop": auto,
    }  # fmt: skip
    manifest = {"preset": preset, "hardware": "test", "focus_n": cfg.n, "profile": "test", "wall_s": 0.0,
                "settings": {**asdict(SweepConfig(ns=(cfg.n,))), "ns": [cfg.n]}, "runs": [], "skipped": [],
                "ndcg": {"n": cfg.n, "requests": 0, "routes": {r: {"ndcg10": 0.5} for r in SweepConfig().routes}},
                "inprocess": {"route": "heavy", "n": cfg.n, "p50_ms": 1.0, "threads": 1, "repeats": 1}}  # fmt: skip
    (tmp_path / "sweep.json").write_text(json.dumps(manifest))
    (tmp_path / "capacity.json").write_text(json.dumps(capacity))
    summary = write_summary(tmp_path)
    assert summary["ceiling"]["heavy"] > 0 and summary["saturation"]["batched"]["heavy"]["saturation_per_s"] > 0
    for path in write_plots(tmp_path):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = write_report(tmp_path).read_text()
    assert "## Capacity at N=1024" in report and "batched, BLS scorers sat./s" in report
