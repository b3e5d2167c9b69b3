"""How much load the server carries at N=1024: ceiling, saturation, open loop, auto under load.

    .venv/bin/python -m perf.capacity --results perf/results        # part of make bench (after perf.sweep)

In one run on one machine (ratios only mean something within it):
1. the compute ceiling: the served ONNX graphs in process, one thread per core (perf/ceiling.py);
2. per route, closed-loop perf_analyzer at concurrency 1 and at ``saturation_concurrency``, on the
   unbatched configuration (perf/repository.py unbatched_copy: max_batch_size 1), the batched one
   with the scorers called by BLS (``batched_bls``: ranker parameter scorer_calls=bls, as before
   the CPU profile ran them in the ranker's process) and then the batched one as served, with the
   batch sizes Triton formed meanwhile (its per-model batch statistics);
3. per route, open-loop perf_analyzer (Poisson arrivals) at fractions of that route's batched
   saturation throughput, up to past it: p50/p99 and achieved throughput per offered rate, and the
   highest rate whose p99 stays within ``p99_limit_ms``;
4. auto and each fixed route under open-loop load (perf/open_loop.py) with a ``budget_ms`` budget at
   multiples of heavy's saturation throughput: p99, budget misses, errors, routes, NDCG@10.
It writes ``capacity.json`` into ``--results``; perf/summary.py folds it into summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from client.ranking_client import infer
from export.config import PRESETS
from export.world import make_world
from perf.analyzer import Job, Window, run_analyzer, run_rate
from perf.ceiling import measure_routes
from perf.inputs import world_requests, write_inputs
from perf.open_loop import make_pool
from perf.open_loop import run as open_loop
from perf.repository import ranker_config, repository_copy, unbatched_copy
from perf.sweep import exported_preset, hardware
from serving.contract import ADAPTIVE_RANKING, DEFAULT_ROUTE, FIXED_ROUTES
from serving.server.launcher import REPO_ROOT, RunningServer, ServerConfig, check_artifacts, run_server

log = logging.getLogger(__name__)
BATCHED_MODELS = ("embedding_lookup", "user_tower", "ranker", "scorer_light", "scorer_heavy")


@dataclass(frozen=True)
class CapacityConfig:
    n: int = 1024
    saturation_concurrency: tuple[int, ...] = (16, 64)  # the highest throughput among these is saturation
    window: Window = field(default_factory=lambda: Window(interval_ms=1500, request_count=60, stability_pct=30))
    rate_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)  # x the route's saturation
    rate_interval_ms: int = 3000
    p99_limit_ms: float = 50.0
    budget_ms: float = 50.0
    auto_loads: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)  # x heavy's batched saturation throughput
    open_loop_seconds: float = 8.0
    ceiling_seconds: float = 5.0
    requests_per_file: int = 8
    pool: int = 32


PROFILES: dict[str, CapacityConfig] = {
    "full": CapacityConfig(),
    "smoke": CapacityConfig(
        n=64,
        saturation_concurrency=(4,),
        window=Window(interval_ms=300, request_count=10, stability_pct=60, max_trials=4, retry_stability_pct=(200,)),
        rate_fractions=(0.5, 1.5),
        rate_interval_ms=500,
        auto_loads=(1.5,),
        open_loop_seconds=1.5,
        ceiling_seconds=1.0,
        requests_per_file=2,
        pool=4,
    ),
}


def batch_statistics(client: grpcclient.InferenceServerClient) -> dict[str, dict[int, int]]:
    """{model: {batch size: executions}} so far (Triton's cumulative per-model batch statistics)."""
    out = {}
    for model in BATCHED_MODELS:
        stats = client.get_inference_statistics(model).model_stats[0]
        out[model] = {int(b.batch_size): int(b.compute_infer.count) for b in stats.batch_stats}
    return out


def _delta(after: dict[str, dict[int, int]], before: dict[str, dict[int, int]]) -> dict[str, dict]:
    """Executions per batch size between two snapshots, and the mean requests per execution."""
    out = {}
    for model, sizes in after.items():
        counts = {b: c - before.get(model, {}).get(b, 0) for b, c in sizes.items()}
        counts = {b: c for b, c in sorted(counts.items()) if c > 0}
        runs = sum(counts.values())
        mean = sum(b * c for b, c in counts.items()) / runs if runs else None
        out[model] = {"executions_by_batch_size": counts, "mean_batch_size": mean}
    return out


def saturation(server: RunningServer, cfg: CapacityConfig, inputs: Path, results: Path, label: str) -> dict:
    """Per route: closed-loop p50 at concurrency 1 and, at the concurrency (of
    ``cfg.saturation_concurrency``) with the highest throughput, throughput and p99; batch sizes formed."""
    out = {}
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for route in FIXED_ROUTES:
            before = batch_statistics(client)
            # One perf_analyzer call per level: its --concurrency-range is linear (1:64:step).
            runs = [
                run_analyzer(Job(f"{label}-{route}-n{cfg.n}-c{c}", ADAPTIVE_RANKING.name, inputs, (c,), route),
                             server.grpc_url, cfg.window, results / "csv" / "capacity")
                for c in (1, *cfg.saturation_concurrency)
            ]  # fmt: skip
            rows = {r.concurrency: r for run in runs for r in run.rows}
            c1 = rows.get(1)
            loaded = [rows[c] for c in cfg.saturation_concurrency if c in rows]
            sat = max(loaded, key=lambda r: r.infer_per_s) if loaded else None
            out[route] = {
                "p50_c1_ms": c1.p50_ms if c1 else None,
                "saturation_per_s": sat.infer_per_s if sat else None,
                "saturation_p99_ms": sat.p99_ms if sat else None,
                "saturation_concurrency": sat.concurrency if sat else None,
                "by_concurrency": {str(r.concurrency): {"per_s": r.infer_per_s, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}
                                   for r in rows.values()},  # fmt: skip
                "missing": [c for run in runs for c in run.missing],
                "batches": _delta(batch_statistics(client), before),
            }
            log.info("%s %s: c=1 p50 %s ms, saturation %s/s at c=%s", label, route, out[route]["p50_c1_ms"],
                     out[route]["saturation_per_s"], out[route]["saturation_concurrency"])  # fmt: skip
    return out


def open_loop_rates(server: RunningServer, cfg: CapacityConfig, inputs: Path, results: Path, sat: dict) -> dict:
    """Per route: perf_analyzer Poisson sweeps at fractions of its saturation throughput."""
    out = {}
    for route in FIXED_ROUTES:
        top = sat[route]["saturation_per_s"]
        if not top:
            out[route] = {"points": [], "max_rate_within_p99": None, "note": "no saturation throughput measured"}
            continue
        points = []
        for fraction in cfg.rate_fractions:
            rate = max(1.0, round(top * fraction))
            job = Job(f"open-{route}-n{cfg.n}", ADAPTIVE_RANKING.name, inputs, route=route)
            p = run_rate(job, server.grpc_url, rate, cfg.rate_interval_ms, results / "csv" / "capacity")
            point = {"fraction": fraction, "offered_per_s": rate, "exit_code": p.exit_code, "error": p.error}
            if p.row is not None:
                point.update(achieved_per_s=p.row.infer_per_s, p50_ms=p.row.p50_ms, p99_ms=p.row.p99_ms)
            points.append(point)
        within = [q["offered_per_s"] for q in points if q.get("p99_ms") is not None and q["exit_code"] == 0
                  and q["p99_ms"] <= cfg.p99_limit_ms]  # fmt: skip
        out[route] = {"points": points, "max_rate_within_p99": max(within) if within else None}
        log.info("open loop %s: %s; max rate with p99 <= %g ms: %s", route,
                 [(q["offered_per_s"], q.get("p99_ms")) for q in points], cfg.p99_limit_ms,
                 out[route]["max_rate_within_p99"])  # fmt: skip
    return out


def auto_under_load(server: RunningServer, cfg: CapacityConfig, preset: str, heavy_sat: float | None) -> list[dict]:
    """auto and each fixed route, open loop with a budget, at multiples of heavy's saturation throughput."""
    if not heavy_sat:
        return []
    pool = make_pool(make_world(PRESETS[preset].world), cfg.n, cfg.pool)
    out = []
    for load in cfg.auto_loads:
        for route in (DEFAULT_ROUTE, *FIXED_ROUTES):
            rate = heavy_sat * load
            report = asyncio.run(open_loop(server.grpc_url, pool, rate, cfg.open_loop_seconds, route, cfg.budget_ms))
            out.append({"load": load, **report.as_dict()})
            time.sleep(1.0)  # let the queues drain before the next point
    return out


def _warm(server: RunningServer, preset: str, n: int) -> None:
    request = world_requests(make_world(PRESETS[preset].world), n, 1)[0][0]
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        for _ in range(3):
            for route in FIXED_ROUTES:
                infer(client, request, route=route)


def measure(model_repository: Path, preset: str, cfg: CapacityConfig, results: Path) -> dict:
    start = time.perf_counter()
    policy = ranker_config(model_repository).policy
    ceiling = measure_routes(model_repository, preset, cfg.n, cfg.ceiling_seconds, policy=policy)
    files = write_inputs(make_world(PRESETS[preset].world), (cfg.n,), cfg.requests_per_file, results / "inputs")
    inputs = files[cfg.n].ranking
    manifest: dict = {
        "hardware": hardware(), "preset": preset, "settings": asdict(cfg),
        "ceiling": {route: c.as_dict() for route, c in ceiling.items()},
    }  # fmt: skip
    variants = {  # the configurations compared against the served one, each a copy of the repository
        "unbatched": unbatched_copy,
        "batched_bls": lambda src, dst: repository_copy(src, dst, {"scorer_calls": "bls"}),
    }
    for name, make_copy in variants.items():
        with tempfile.TemporaryDirectory(prefix=f"{name}-") as tmp:
            repo = make_copy(model_repository, Path(tmp) / "repo")
            with run_server(ServerConfig(model_repository=repo, log_path=Path(tmp) / "server.log")) as server:
                _warm(server, preset, cfg.n)
                manifest[name] = saturation(server, cfg, inputs, results, name.replace("_", "-"))
    with run_server(ServerConfig(model_repository=model_repository)) as server:
        _warm(server, preset, cfg.n)
        manifest["batched"] = saturation(server, cfg, inputs, results, "batched")
        manifest["open_loop"] = open_loop_rates(server, cfg, inputs, results, manifest["batched"])
        manifest["auto_open_loop"] = auto_under_load(
            server, cfg, preset, manifest["batched"]["heavy"]["saturation_per_s"]
        )
    manifest["wall_s"] = time.perf_counter() - start
    (results / "capacity.json").write_text(json.dumps(manifest, indent=2))
    log.info("capacity done in %.0f s -> %s", manifest["wall_s"], results / "capacity.json")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="full")
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
    args.results.mkdir(parents=True, exist_ok=True)
    measure(args.model_repository, preset, PROFILES[args.profile], args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
