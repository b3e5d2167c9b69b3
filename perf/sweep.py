"""The perf_analyzer sweep: routes x N x concurrency, the per-candidate baseline, NDCG, overhead.

    .venv/bin/python -m perf.sweep --profile full --preset small   # make bench (then summary, plots, report)
    .venv/bin/python -m perf.sweep --profile smoke                 # make bench-smoke (whatever is exported)

Starts Triton itself (serving/server/launcher.py, CPU profile) on the exported models,
writes the input JSON (perf/inputs.py), then for every N runs perf_analyzer on
``adaptive_ranking`` once per route over the concurrency levels, and on
``per_candidate_baseline`` at concurrency 1 unless one request would take longer than
the profile's cap (measured with a probe, or extrapolated linearly from the previous N;
skips are recorded with their reason). Then it measures NDCG@10 per route on served
requests and the in-process composition's p50 at the focus N. Everything lands in
``<results>/``: ``csv/<run>.csv`` + ``.log`` per perf_analyzer run, and ``sweep.json``,
the manifest perf/summary.py and perf/report.py read.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import tritonclient.grpc as grpcclient

from client.ranking_client import RankingRequest
from export.config import PRESETS
from export.world import make_world
from perf.analyzer import Job, Run, Window, run_analyzer
from perf.inputs import N_BUCKETS, world_requests, write_inputs
from perf.parse import parse_composing
from perf.quality import inprocess_p50_ms, probe_ms, served_ndcg
from serving.contract import ADAPTIVE_RANKING, PER_CANDIDATE_BASELINE, ROUTES
from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, check_artifacts, run_server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepConfig:
    ns: tuple[int, ...] = N_BUCKETS
    routes: tuple[str, ...] = ROUTES
    concurrency: tuple[int, ...] = (1, 2, 3, 4)  # perf_analyzer levels of every route run
    window: Window = field(default_factory=Window)
    window_target_ms: float = 2500.0  # fewer requests per window for slow points, never under min_requests
    min_requests: int = 5
    requests_per_file: int = 8
    baseline_cap_ms: float = 2000.0  # skip baseline N whose single request would take longer
    focus_n: int = 1024  # N of the route comparison, NDCG and serving overhead
    ndcg_requests: int = 32
    overhead_route: str = "heavy"  # same work served and in-process: every candidate on heavy
    inprocess_repeats: int = 30
    inprocess_threads: int = 2


PROFILES: dict[str, SweepConfig] = {
    "full": SweepConfig(),
    "smoke": SweepConfig(
        ns=(16, 64),
        concurrency=(1,),
        window=Window(interval_ms=300, request_count=5, stability_pct=50, max_trials=4, retry_stability_pct=(100,)),
        requests_per_file=2,
        ndcg_requests=4,
        inprocess_repeats=5,
    ),
}


def hardware() -> str:
    """CPU model from /proc/cpuinfo and the cores this process may use."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def exported_preset(reports: Path = REPO_ROOT / "reports") -> str:
    """The preset export/build.py last wrote into the model repository (reports/export.json)."""
    path = reports / "export.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing, so the exported preset is unknown: run `make export`")
    return json.loads(path.read_text())["preset"]["name"]


def _window_for(cfg: SweepConfig, single_ms: float) -> Window:
    count = int(min(cfg.window.request_count, max(cfg.min_requests, cfg.window_target_ms // max(single_ms, 1e-3))))
    return replace(cfg.window, request_count=count)


def _record(run: Run, n: int, probe: float, results: Path, seconds: float) -> dict:
    stdout = run.csv.with_suffix(".log").read_text(errors="replace")
    csvs = [run.csv, *sorted(run.csv.parent.glob(f"{run.job.name}-retry-c*.csv"))]
    return {
        "name": run.job.name,
        "model": run.job.model,
        "route": run.job.route,
        "n": n,
        "csv": [str(p.relative_to(results)) for p in csvs if p.is_file()],
        "log": str(run.csv.with_suffix(".log").relative_to(results)),
        "concurrency": list(run.job.concurrency),
        "missing": list(run.missing),
        "loose": {str(c): pct for c, pct in run.loose.items()},
        "attempts": run.attempts,
        "probe_ms": probe,
        "seconds": seconds,
        "composing": {str(c): m for c, m in parse_composing(stdout).items()},
    }


def _baseline(
    client: grpcclient.InferenceServerClient,
    server: RunningServer,
    cfg: SweepConfig,
    results: Path,
    inputs: Path,
    request: RankingRequest,
    last: tuple[int, float] | None,
    runs: list[dict],
    skipped: list[dict],
) -> tuple[int, float] | None:
    """Measure the baseline at this N unless one request would exceed the cap: estimated linearly from
    the last measured N, else probed. Appends to ``runs`` or ``skipped``; returns the new (N, ms)."""
    n = request.candidate_ids.shape[0]
    estimate = last[1] * n / last[0] if last else 0.0
    reason = None
    if estimate > cfg.baseline_cap_ms:
        reason = f"estimated {estimate:.0f} ms per request (p50 {last[1]:.0f} ms at N={last[0]} scaled linearly)"
    else:
        probe = probe_ms(client, request, baseline=True, repeats=1)
        if probe > cfg.baseline_cap_ms:
            reason, last = f"measured {probe:.0f} ms for one request", (n, probe)
    if reason:
        reason += f" > cap {cfg.baseline_cap_ms:.0f} ms"
        skipped.append({"model": PER_CANDIDATE_BASELINE.name, "n": n, "reason": reason})
        log.warning("baseline N=%d skipped: %s", n, skipped[-1]["reason"])
        return last
    job = Job(f"baseline-n{n}", PER_CANDIDATE_BASELINE.name, inputs, (1,))
    t0 = time.perf_counter()
    run = run_analyzer(job, server.grpc_url, _window_for(cfg, probe), results / "csv")
    runs.append(_record(run, n, probe, results, time.perf_counter() - t0))
    log.info("%s: probe %.1f ms, %s", job.name, probe, [(r.concurrency, r.p50_ms) for r in run.rows])
    return (n, run.rows[0].p50_ms) if run.rows else (n, probe)


def sweep(server: RunningServer, cfg: SweepConfig, preset: str, results: Path) -> dict:
    """Run the whole sweep against ``server``; returns the manifest (``finish`` completes and writes it)."""
    start = time.perf_counter()
    world = make_world(PRESETS[preset].world)
    files = write_inputs(world, cfg.ns, cfg.requests_per_file, results / "inputs")
    runs, skipped = [], []
    client = grpcclient.InferenceServerClient(server.grpc_url)
    baseline_last = None
    try:
        warmup = world_requests(world, min(cfg.ns), 1)[0][0]
        for route in cfg.routes:  # every scorer serves once before perf_analyzer asks for its statistics
            probe_ms(client, warmup, route=route, repeats=1)
        for n in cfg.ns:
            request = world_requests(world, n, 1)[0][0]
            for route in cfg.routes:
                probe = probe_ms(client, request, route=route)
                job = Job(f"{route}-n{n}", ADAPTIVE_RANKING.name, files[n].ranking, cfg.concurrency, route)
                t0 = time.perf_counter()
                run = run_analyzer(job, server.grpc_url, _window_for(cfg, probe), results / "csv")
                runs.append(_record(run, n, probe, results, time.perf_counter() - t0))
                log.info("%s: probe %.1f ms, %s", job.name, probe, [(r.concurrency, r.p50_ms) for r in run.rows])
            baseline_last = _baseline(
                client, server, cfg, results, files[n].baseline, request, baseline_last, runs, skipped
            )
        focus_n = cfg.focus_n if cfg.focus_n in cfg.ns else max(cfg.ns)
        ndcg = served_ndcg(client, world, focus_n, cfg.ndcg_requests, cfg.routes)
    finally:
        client.close()
    manifest = {
        "preset": preset,
        "hardware": hardware(),
        "focus_n": focus_n,
        "settings": asdict(cfg),
        "runs": runs,
        "skipped": skipped,
        "ndcg": {"n": focus_n, "requests": cfg.ndcg_requests, "routes": ndcg},
        "served_seconds": time.perf_counter() - start,
    }
    return manifest


def measure_inprocess(cfg: SweepConfig, preset: str, model_repository: Path, focus_n: int) -> dict:
    """The in-process composition on the perf inputs of ``focus_n`` (run with the server stopped)."""
    requests, _ = world_requests(make_world(PRESETS[preset].world), focus_n, cfg.requests_per_file)
    p50 = inprocess_p50_ms(model_repository, requests, cfg.overhead_route, cfg.inprocess_repeats, cfg.inprocess_threads)
    return {"route": cfg.overhead_route, "n": focus_n, "p50_ms": p50, "threads": cfg.inprocess_threads,
            "repeats": cfg.inprocess_repeats}


def finish(manifest: dict, cfg: SweepConfig, profile: str, model_repository: Path, results: Path, start: float) -> dict:
    """Add the in-process measurement and the run's metadata, write ``sweep.json``."""
    manifest["profile"] = profile
    manifest["inprocess"] = measure_inprocess(cfg, manifest["preset"], model_repository, manifest["focus_n"])
    manifest["wall_s"] = time.perf_counter() - start
    (results / "sweep.json").write_text(json.dumps(manifest, indent=2))
    log.info("sweep (%s, preset %s) done in %.0f s -> %s", profile, manifest["preset"], manifest["wall_s"], results)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None,
                        help="require this exported preset (default: measure whatever is exported)")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--reports", type=Path, default=REPO_ROOT / "reports", help="holds export.json")
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "perf" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        check_artifacts(args.model_repository)
        preset = exported_preset(args.reports)
    except FileNotFoundError as e:
        log.error("%s", e)
        return 2
    if args.preset and preset != args.preset:
        log.error("model_repository holds the %s preset, not %s: run `make export PRESET=%s` (or bench PRESET=%s)",
                  preset, args.preset, args.preset, preset)
        return 2
    cfg = PROFILES[args.profile]
    start = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)
    with run_server(ServerConfig(model_repository=args.model_repository, config_name="cpu")) as server:
        manifest = sweep(server, cfg, preset, args.results)
    finish(manifest, cfg, args.profile, args.model_repository, args.results, start)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
