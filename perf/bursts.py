"""Bursts: the dynamic batcher with and without a queue policy, in one run.

    .venv/bin/python -m perf.bursts --bursts 20 --size 16        # JSON on stdout

A burst is ``size`` requests sent at once and awaited together; the next burst starts when the
last answer is in. Two servers on the same repository, one after the other: as shipped, and a
copy whose batched models get back the queue policy they used to have (``max_queue_size``, a
timeout, REJECT). With a policy Triton's dynamic batcher does not prefetch payloads: requests
that arrive while every instance is busy are batched only when another request arrives or its
500 ms wait ends (core/src/dynamic_batch_scheduler.cc, ``default_wait_microseconds``), and a
burst has no later request. Reported per variant: the bursts' median and slowest time and how
many took over 400 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import tritonclient.grpc.aio as grpcaio
from google.protobuf import text_format

from client.ranking_client import MODEL_NAME, RankingRequest, build_inputs, requested_outputs
from export.config import PRESETS
from export.world import make_world
from perf.inputs import world_requests
from perf.repository import read_config, repository_copy
from serving.server.launcher import REPO_ROOT, ServerConfig, run_server

STALL_MS = 400.0  # well above a burst's time on an idle 2-core machine, well below the 500 ms wait
TOP_K = 10


@dataclass(frozen=True)
class BurstsConfig:
    bursts: int = 20
    size: int = 16
    n: int = 1024
    route: str = "light"
    preset: str = "small"


def with_queue_policy(src: Path, dst: Path, max_queue_size: int = 128, timeout_us: int = 5_000_000) -> Path:
    """A copy of ``src`` whose batched models (max_batch_size > 0) have a bounded queue, every profile."""
    repository_copy(src, dst)
    for path in sorted(dst.glob("*/config.pbtxt")) + sorted(dst.glob("*/configs/*.pbtxt")):
        cfg = read_config(path)
        if cfg.max_batch_size > 0:
            policy = cfg.dynamic_batching.default_queue_policy
            policy.timeout_action = policy.REJECT
            policy.default_timeout_microseconds = timeout_us
            policy.max_queue_size = max_queue_size
            path.write_text(text_format.MessageToString(cfg))
    return dst


async def _bursts(url: str, requests: list[RankingRequest], cfg: BurstsConfig) -> list[float]:
    """Each burst's time (ms), after one warm-up burst."""
    client = grpcaio.InferenceServerClient(url)
    inputs = [build_inputs(grpcaio, r.arrays(), TOP_K) for r in requests]
    outputs = requested_outputs(grpcaio)
    params = {"route": cfg.route}
    times = []
    try:
        for i in range(cfg.bursts + 1):
            start = time.perf_counter()
            await asyncio.gather(
                *(client.infer(MODEL_NAME, inputs[j % len(inputs)], outputs=outputs, parameters=params)
                  for j in range(cfg.size))
            )
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    finally:
        await client.close()
    return times


def summarize(times_ms: list[float]) -> dict:
    return {
        "bursts": len(times_ms),
        "median_ms": round(statistics.median(times_ms), 1),
        "max_ms": round(max(times_ms), 1),
        f"over_{STALL_MS:g}_ms": sum(t > STALL_MS for t in times_ms),
    }


def run(model_repository: Path, cfg: BurstsConfig) -> dict:
    world = make_world(PRESETS[cfg.preset].world)
    requests, _ = world_requests(world, cfg.n, 8)
    out = {"config": asdict(cfg)}
    with tempfile.TemporaryDirectory() as tmp:
        variants = {
            "as_shipped": model_repository,
            "queue_policy": with_queue_policy(model_repository, Path(tmp) / "repo"),
        }
        for label, repo in variants.items():
            with run_server(ServerConfig(model_repository=repo, log_path=Path(tmp) / f"{label}.log")) as server:
                out[label] = summarize(asyncio.run(_bursts(server.grpc_url, requests, cfg)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = BurstsConfig()
    parser.add_argument("--model-repository", type=Path, default=REPO_ROOT / "model_repository")
    parser.add_argument("--bursts", type=int, default=defaults.bursts)
    parser.add_argument("--size", type=int, default=defaults.size)
    parser.add_argument("--n", type=int, default=defaults.n)
    parser.add_argument("--route", default=defaults.route)
    parser.add_argument("--preset", default=defaults.preset, choices=sorted(PRESETS))
    args = parser.parse_args()
    cfg = BurstsConfig(args.bursts, args.size, args.n, args.route, args.preset)
    print(json.dumps(run(args.model_repository, cfg), indent=2))


if __name__ == "__main__":
    main()
