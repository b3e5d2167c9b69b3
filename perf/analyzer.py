"""Run the real perf_analyzer (from the tritonclient 2.51 wheel) against a running server.

    run = run_analyzer(Job("auto-n1024", "adaptive_ranking", inputs, route="auto"), grpc_url, window, out_dir)
    .venv/bin/python -m perf.analyzer --url 127.0.0.1:8001 --input-data in.json --route heavy --csv out.csv

One call = one model, one input file, one concurrency range, writing ``-f <name>.csv``
and keeping perf_analyzer's output in ``<name>.log`` next to it. Measurement is
``count_windows``: each window lasts at least ``window.interval_ms`` and until
``window.request_count`` requests completed, so fast and slow points both get
enough requests without long runs; stability is judged on p50 (``--percentile 50``).
If a level does not stabilise, perf_analyzer exits non-zero after writing the levels
that did; each missing level is retried alone with looser thresholds and more requests
per window (``Run.attempts`` says which attempt produced it), and anything still
missing is reported in ``Run.missing``, never dropped silently.
``--collect-metrics`` is not used: it collects GPU metrics only, none on the CPU profile.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field, replace
from pathlib import Path

import tritonclient.grpc as grpcclient

from perf.parse import PerfRow, RateRow, parse_csv, parse_rate_csv
from serving.ranker import RankerConfig

log = logging.getLogger(__name__)

# Models the ranker calls with BLS, per route (when its scorer_calls is "bls"): perf_analyzer then
# reports them with the ensemble's steps.
# perf_analyzer 2.51 fails ("failed to find the requested model version") when a listed model serves
# nothing during a window, so only routes that always call a tier list it; `auto` may skip either.
BLS_COMPOSING: dict[str, tuple[str, ...]] = {
    "light": ("scorer_light",),
    "heavy": ("scorer_heavy",),
    "cascade": ("scorer_light", "scorer_heavy"),
}


@dataclass(frozen=True)
class Window:
    """How each concurrency level is measured."""

    interval_ms: int = 1000
    request_count: int = 30
    stability_pct: int = 25
    max_trials: int = 6
    retry_stability_pct: tuple[int, ...] = (60, 200)  # successive retries of a level, each with 2x the requests


@dataclass(frozen=True)
class Job:
    name: str  # file stem of the CSV and log
    model: str
    input_data: Path
    concurrency: tuple[int, ...] = (1,)
    route: str | None = None  # request parameter `route`, adaptive_ranking only


@dataclass(frozen=True)
class Run:
    job: Job
    csv: Path
    rows: list[PerfRow]
    missing: tuple[int, ...] = ()  # concurrency levels without a stable measurement
    loose: dict[int, int] = field(default_factory=dict)  # level -> the looser ±% it was only stable at
    attempts: list[str] = field(default_factory=list)  # one line per perf_analyzer call


def perf_analyzer_path() -> Path:
    return Path(sys.executable).parent / "perf_analyzer"


def analyzer_env() -> dict[str, str]:
    """perf_analyzer needs libcudart.so.12 (nvidia-cuda-runtime-cu12) even without a GPU."""
    env = dict(os.environ)
    cudart = Path(sysconfig.get_paths()["purelib"]) / "nvidia" / "cuda_runtime" / "lib"
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(cudart), env.get("LD_LIBRARY_PATH", "")) if p)
    return env


def concurrency_range(levels: tuple[int, ...]) -> str:
    """``start:end:step`` for evenly spaced levels; ValueError otherwise."""
    if len(levels) == 1:
        return str(levels[0])
    step = levels[1] - levels[0]
    if step < 1 or any(b - a != step for a, b in zip(levels, levels[1:])):
        raise ValueError(f"concurrency levels must be increasing and evenly spaced, got {levels}")
    return f"{levels[0]}:{levels[-1]}:{step}"


def bls_composing(job: Job, url: str) -> tuple[str, ...]:
    """The scorer models ``job``'s requests reach by BLS on the server at ``url``: none when its ranker
    runs the scorers' graphs in process (scorer_calls onnxruntime, the CPU profile)."""
    if job.model != "adaptive_ranking" or job.route not in BLS_COMPOSING:
        return ()
    with grpcclient.InferenceServerClient(url) as client:
        params = client.get_model_config("ranker", as_json=True)["config"].get("parameters", {})
    scorer_calls = params.get("scorer_calls", {}).get("string_value", RankerConfig().scorer_calls)
    return BLS_COMPOSING[job.route] if scorer_calls == "bls" else ()


def command(
    job: Job,
    url: str,
    window: Window,
    csv_path: Path,
    levels: tuple[int, ...],
    stability: int,
    composing: tuple[str, ...] = (),
) -> list[str]:
    cmd = [
        str(perf_analyzer_path()),
        "-m", job.model,
        "-u", url,
        "-i", "grpc",
        "--input-data", str(job.input_data),
        "--concurrency-range", concurrency_range(levels),
        "--measurement-mode", "count_windows",
        "--measurement-request-count", str(window.request_count),
        "--measurement-interval", str(window.interval_ms),
        "--stability-percentage", str(stability),
        "--max-trials", str(window.max_trials),
        "--percentile", "50",
        "-f", str(csv_path),
    ]  # fmt: skip
    if job.route is not None:
        cmd += ["--request-parameter", f"route:{job.route}:string"]
    if composing:
        cmd += ["--bls-composing-models", ",".join(composing)]
    return cmd


def _call(cmd: list[str], log_path: Path) -> int:
    with open(log_path, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=analyzer_env(), check=False)
    return proc.returncode


def run_analyzer(job: Job, url: str, window: Window, out_dir: Path) -> Run:
    """Measure every level of ``job``; unstable levels are retried alone, more loosely, then reported."""
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, log_path = out_dir / f"{job.name}.csv", out_dir / f"{job.name}.log"
    log_path.write_text("")
    for stale in (csv_path, *out_dir.glob(f"{job.name}-retry-c*.csv")):
        stale.unlink(missing_ok=True)
    composing = bls_composing(job, url)
    rc = _call(command(job, url, window, csv_path, job.concurrency, window.stability_pct, composing), log_path)
    rows = parse_csv(csv_path) if csv_path.is_file() else []
    attempts = [f"{concurrency_range(job.concurrency)} at ±{window.stability_pct}%: exit {rc}"]
    loose, loose_levels = replace(window, request_count=2 * window.request_count), {}
    for level in [c for c in job.concurrency if c not in {r.concurrency for r in rows}]:
        retry_csv = out_dir / f"{job.name}-retry-c{level}.csv"
        for stability in window.retry_stability_pct:
            retry_csv.unlink(missing_ok=True)
            rc = _call(command(job, url, loose, retry_csv, (level,), stability, composing), log_path)
            attempts.append(f"retry c={level} at ±{stability}%: exit {rc}")
            if retry_csv.is_file() and (retried := parse_csv(retry_csv)):
                rows += retried
                loose_levels[level] = stability
                break
    rows.sort(key=lambda r: r.concurrency)
    missing = tuple(c for c in job.concurrency if c not in {r.concurrency for r in rows})
    if missing:
        log.warning("%s: no stable measurement at concurrency %s (see %s)", job.name, missing, log_path)
    return Run(job, csv_path, rows, missing, loose_levels, attempts)


@dataclass(frozen=True)
class RatePoint:
    """One offered Poisson rate: the measured row, or why there is none (perf_analyzer's exit status)."""

    offered_per_s: float
    row: RateRow | None
    exit_code: int
    error: str = ""  # the first error line perf_analyzer printed


def run_rate(job: Job, url: str, rate: float, interval_ms: int, out_dir: Path) -> RatePoint:
    """Open-loop load at ``rate`` requests/s (Poisson arrivals, asynchronous sends) for three windows of
    ``interval_ms``: latency and achieved throughput, whether or not they are stable (past saturation
    they never are). One call per rate, so a rate whose requests are refused loses only itself."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{job.name}-r{rate:g}"
    csv_path, log_path = out_dir / f"{name}.csv", out_dir / f"{name}.log"
    log_path.write_text("")
    csv_path.unlink(missing_ok=True)
    cmd = [
        str(perf_analyzer_path()), "-m", job.model, "-u", url, "-i", "grpc",
        "--input-data", str(job.input_data),
        "--request-rate-range", f"{rate:g}", "--request-distribution", "poisson",
        "--async", "--max-threads", "64",
        "--measurement-mode", "time_windows", "--measurement-interval", str(interval_ms),
        "--stability-percentage", "999", "--max-trials", "3",
        "-f", str(csv_path),
    ]  # fmt: skip
    if job.route is not None:
        cmd += ["--request-parameter", f"route:{job.route}:string"]
    rc = _call(cmd, log_path)
    rows = parse_rate_csv(csv_path) if csv_path.is_file() and csv_path.stat().st_size else []
    error = next((line.strip() for line in log_path.read_text().splitlines() if "error" in line.lower()), "")
    return RatePoint(rate, rows[0] if rows else None, rc, error[:300])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="gRPC host:port")
    parser.add_argument("--model", default="adaptive_ranking")
    parser.add_argument("--input-data", type=Path, required=True)
    parser.add_argument("--route", default=None)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1])
    parser.add_argument("--csv", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    job = Job(args.csv.stem, args.model, args.input_data, tuple(args.concurrency), args.route)
    run = run_analyzer(job, args.url, Window(), args.csv.parent)
    for row in run.rows:
        log.info("%s", row)
    return 1 if run.missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
