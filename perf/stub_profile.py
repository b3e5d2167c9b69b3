"""Where a served request's time goes: Triton's per-model statistics and py-spy on every stub.

    python -m perf.stub_profile                       # heavy route, N=1024, 8 s per stub (make profile)
    python -m perf.stub_profile --route light --n 256 --seconds 4

It starts the bundled Triton server on the model repository, sends one world request
of N candidates again and again from one client (concurrency 1), and meanwhile

1. reads Triton's inference statistics before and after a counted window: per model,
   calls per request and the average total / queue / compute input / infer / output
   time per call (what ``perf_analyzer --bls-composing-models`` shows, here for every
   model of the ensemble and the ranker's BLS calls together);
2. records each Python stub with ``py-spy record --gil`` (samples taken while the stub
   holds the GIL: its Python work, not its waits) and lists the frames that hold
   the most samples, inclusive.

It writes ``perf/results/profile/profile.{md,json}`` and py-spy's raw stacks per stub.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient

from client.ranking_client import MODEL_NAME, RankingRequest, infer
from export.config import PRESETS
from export.world import make_world
from perf.sweep import exported_preset, hardware
from serving.contract import ROUTES
from serving.server.launcher import (
    REPO_ROOT,
    RunningServer,
    ServerConfig,
    check_artifacts,
    run_server,
    stub_processes,
)

log = logging.getLogger(__name__)

STAT_PARTS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ProfileConfig:
    route: str = "heavy"
    n: int = 1024
    seconds: float = 8.0  # py-spy window per stub
    window_requests: int = 60  # requests counted for the statistics
    rate_hz: int = 250


def stats_snapshot(client: grpcclient.InferenceServerClient) -> dict[str, dict[str, tuple[int, int]]]:
    """{model: {part: (count, ns)}} for success and the STAT_PARTS, from Triton's statistics API."""
    out = {}
    for model in client.get_inference_statistics(as_json=True)["model_stats"]:
        stats = model["inference_stats"]
        parts = ("success", *STAT_PARTS)
        out[model["name"]] = {p: (int(stats[p].get("count", 0)), int(stats[p].get("ns", 0))) for p in parts}
    return out


def settled_snapshot(
    client: grpcclient.InferenceServerClient, before: dict | None = None, requests: int = 0, timeout_s: float = 5.0
) -> dict[str, dict[str, tuple[int, int]]]:
    """A snapshot once the counts stopped moving (two reads 0.1 s apart agree) and, given
    ``before``, the ensemble has counted ``requests`` since: Triton records a call's statistics
    just after its response goes out, so the last request's may lag its answer."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        now = stats_snapshot(client)
        done = now[MODEL_NAME]["success"][0] - (before or {}).get(MODEL_NAME, {}).get("success", (0, 0))[0]
        if (done >= requests and now == last) or time.monotonic() > deadline:
            return now
        last = now
        time.sleep(0.1)


def breakdown(before: dict, after: dict, requests: int) -> dict[str, dict[str, float]]:
    """Per model called in the window: calls per request and average ms per call of each part."""
    rows = {}
    for model, parts in sorted(after.items()):
        calls = parts["success"][0] - before.get(model, {}).get("success", (0, 0))[0]
        if calls <= 0:
            continue
        row = {"calls_per_request": calls / requests}
        for part in ("success", *STAT_PARTS):
            ns = parts[part][1] - before.get(model, {}).get(part, (0, 0))[1]
            row[f"{'total' if part == 'success' else part}_ms"] = ns / calls / 1e6
        rows[model] = row
    return rows


def top_frames(raw: str, limit: int = 12) -> tuple[int, list[tuple[str, int]]]:
    """py-spy ``--format raw`` text -> (samples, the ``limit`` frames in most samples, inclusive)."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            if frame:
                inclusive[frame] += int(count)
    return total, inclusive.most_common(limit)


def record(pid: int, cfg: ProfileConfig, out: Path) -> str | None:
    """Raw py-spy stacks of ``pid`` over cfg.seconds, or None (logged) when py-spy cannot attach."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    cmd = [exe, "record", "--pid", str(pid), "--duration", str(int(cfg.seconds)), "--rate", str(cfg.rate_hz)]
    cmd += ["--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=cfg.seconds + 60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("py-spy failed on pid %d: %s", pid, exc)
        return None
    if proc.returncode != 0 or not out.exists():
        log.warning("py-spy could not record pid %d (ptrace allowed?): %s", pid, proc.stderr.strip()[-300:])
        return None
    return out.read_text()


def markdown(result: dict) -> str:
    head = [
        f"# Stub profile: route {result['route']}, N={result['n']}, concurrency 1",
        "",
        f"Hardware: {result['hardware']}; preset {result['preset']}; command `python -m perf.stub_profile "
        f"--route {result['route']} --n {result['n']}`.",
        "",
        "## Triton statistics per model (average per call, ms)",
        "",
        "| model | calls / request | total | queue | compute input | compute infer | compute output |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, r in result["models"].items():
        parts = ("total_ms", "queue_ms", "compute_input_ms", "compute_infer_ms", "compute_output_ms")
        head.append(f"| {model} | {r['calls_per_request']:.1f} | " + " | ".join(f"{r[k]:.2f}" for k in parts) + " |")
    head += ["", f"Client p50 over the window: {result['client_p50_ms']:.2f} ms.", ""]
    for model, prof in result["stubs"].items():
        head += [f"## py-spy --gil: {model}", ""]
        if prof is None:
            head += ["- not recorded (py-spy could not attach)", ""]
            continue
        head += [f"{prof['samples']} samples holding the GIL in {result['seconds']:g} s at {result['rate_hz']} Hz.", ""]
        head += [f"- {n / max(prof['samples'], 1):.1%} `{frame}`" for frame, n in prof["frames"]] + [""]
    return "\n".join(head)


def profile(server: RunningServer, cfg: ProfileConfig, preset: str, out_dir: Path) -> dict:
    """Statistics and stub profiles of ``server`` (serving ``preset``'s models) under cfg's load."""
    request = RankingRequest.from_requests(make_world(PRESETS[preset].world).sample_requests(1, cfg.n, 4242), 0)
    out_dir.mkdir(parents=True, exist_ok=True)
    client = grpcclient.InferenceServerClient(server.grpc_url)
    for _ in range(20):  # warm-up: sessions, shared memory, the cost model
        infer(client, request, route=cfg.route)
    before = settled_snapshot(client)  # the warm-up's last request counted
    latencies = []
    for _ in range(cfg.window_requests):
        start = time.perf_counter()
        infer(client, request, route=cfg.route)
        latencies.append((time.perf_counter() - start) * 1e3)
    models = breakdown(before, settled_snapshot(client, before, cfg.window_requests), cfg.window_requests)
    stop = threading.Event()

    def load() -> None:  # keeps the stubs busy while py-spy samples them
        own = grpcclient.InferenceServerClient(server.grpc_url)
        while not stop.is_set():
            infer(own, request, route=cfg.route)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    stubs = {}
    try:
        first = {}  # model -> its first instance's stub (stub_processes sorts by instance name)
        for stub in stub_processes(server.process.pid):
            first.setdefault(stub.model, stub.pid)
        for model, pid in sorted(first.items()):
            if model not in models:
                continue
            raw = record(pid, cfg, out_dir / f"{model}.raw.txt")
            samples, frames = top_frames(raw) if raw is not None else (0, [])
            stubs[model] = None if raw is None else {"samples": samples, "frames": frames}
    finally:
        stop.set()
        loader.join(timeout=30)
    latencies.sort()
    return {
        "hardware": hardware(),
        "preset": preset,
        "route": cfg.route,
        "n": cfg.n,
        "seconds": cfg.seconds,
        "rate_hz": cfg.rate_hz,
        "client_p50_ms": latencies[len(latencies) // 2],
        "models": models,
        "stubs": stubs,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--route", choices=ROUTES, default=ProfileConfig.route)
    parser.add_argument("--n", type=int, default=ProfileConfig.n, help="candidates per request")
    parser.add_argument("--seconds", type=float, default=ProfileConfig.seconds, help="py-spy window per stub")
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "perf" / "results" / "profile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.n < 1 or args.seconds < 1:
        parser.error("--n and --seconds must be >= 1")
    check_artifacts(args.model_repository)
    with run_server(ServerConfig(model_repository=args.model_repository)) as server:
        result = profile(server, ProfileConfig(args.route, args.n, args.seconds), exported_preset(), args.out)
    (args.out / "profile.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "profile.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
