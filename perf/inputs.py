"""perf_analyzer ``--input-data`` JSON from the synthetic world, one file per candidate count N.

    .venv/bin/python -m perf.inputs --preset small --out perf/results/inputs --n 16 64 256 1024 4096

Each file holds several distinct requests (perf_analyzer cycles through them), every
tensor with an explicit shape, in the form perf_analyzer reads::

    {"data": [{"user_features": {"content": [...], "shape": [1, 4]}, "history_ids": {...}, ...}, ...]}

``ranking-n<N>.json`` feeds the ``adaptive_ranking`` ensemble (user side once per
request); ``baseline-n<N>.json`` feeds ``per_candidate_baseline`` with the same requests,
the user inputs tiled per candidate (``user_features`` [N, 4], ``history_ids`` [N, L]).
Tensor names and dtypes come from serving/contract.py. Integer tensors are written as
JSON integers, float tensors as JSON floats (perf_analyzer rejects ``1`` for FP32).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.ranking_client import RankingRequest
from export.config import PRESETS
from export.world import World, make_world
from serving.contract import ADAPTIVE_RANKING, PER_CANDIDATE_BASELINE, ModelSignature, validate_inputs

log = logging.getLogger(__name__)

N_BUCKETS: tuple[int, ...] = (16, 64, 256, 1024, 4096)
SEED_BASE = 10_000  # sample_requests seed = SEED_BASE + N: distinct from the train (0) and eval (1) seeds


@dataclass(frozen=True)
class InputFiles:
    """The input files of one candidate-count bucket."""

    n: int
    ranking: Path
    baseline: Path


def world_requests(
    world: World, n: int, count: int, seed: int | None = None
) -> tuple[list[RankingRequest], np.ndarray]:
    """``count`` requests of ``n`` candidates and their ground-truth relevance (count, n)."""
    requests = world.sample_requests(count, n, SEED_BASE + n if seed is None else seed)
    return [RankingRequest.from_requests(requests, i) for i in range(count)], requests.relevance


def tiled(request: RankingRequest) -> dict[str, np.ndarray]:
    """The per-candidate baseline's inputs: user side repeated for each of the N candidates."""
    n = request.candidate_ids.shape[0]
    return {
        "user_features": np.tile(request.user_features, (n, 1)),  # (N, F_U)
        "history_ids": np.tile(request.history_ids, (n, 1)),  # (N, L)
        "candidate_ids": request.candidate_ids,  # (N,)
        "candidate_features": request.candidate_features,  # (N, F_C)
    }


def tensor_entry(array: np.ndarray, dtype: str) -> dict[str, list]:
    """One tensor as perf_analyzer JSON: flat row-major content plus the explicit shape."""
    flat = np.ascontiguousarray(array).ravel()
    if dtype.startswith("FP"):
        content = [float(v) for v in flat.astype(np.float64)]
    elif dtype.startswith(("INT", "UINT")):
        content = [int(v) for v in flat]
    else:
        raise ValueError(f"perf inputs support numeric tensors only, got dtype {dtype}")
    return {"content": content, "shape": [int(d) for d in array.shape]}


def request_entry(sig: ModelSignature, arrays: dict[str, np.ndarray]) -> dict[str, dict[str, list]]:
    """One request for ``sig``: every input it has, checked against the signature."""
    validate_inputs(sig, arrays)  # RequestError (a ValueError) names the input
    entry = {}
    for spec in sig.inputs:
        if spec.name in arrays:
            entry[spec.name] = tensor_entry(arrays[spec.name], spec.dtype)
    return entry


def input_data(sig: ModelSignature, requests: list[dict[str, np.ndarray]]) -> dict[str, list]:
    """The whole ``--input-data`` document for ``sig``."""
    return {"data": [request_entry(sig, arrays) for arrays in requests]}


def write_inputs(world: World, ns: tuple[int, ...], count: int, out_dir: Path) -> dict[int, InputFiles]:
    """Write the ranking and baseline files of every N in ``ns``; same requests in both."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for n in ns:
        requests, _ = world_requests(world, n, count)
        ranking = out_dir / f"ranking-n{n}.json"
        baseline = out_dir / f"baseline-n{n}.json"
        ranking.write_text(json.dumps(input_data(ADAPTIVE_RANKING, [r.arrays() for r in requests])))
        baseline.write_text(json.dumps(input_data(PER_CANDIDATE_BASELINE, [tiled(r) for r in requests])))
        log.info("N=%d: %d requests -> %s (%.1f MB baseline)", n, count, ranking, baseline.stat().st_size / 1e6)
        files[n] = InputFiles(n, ranking, baseline)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small", help="the world of this preset")
    parser.add_argument("--out", type=Path, default=Path("perf/results/inputs"))
    parser.add_argument("--n", type=int, nargs="+", default=list(N_BUCKETS), help="candidate counts")
    parser.add_argument("--requests", type=int, default=8, help="distinct requests per file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    write_inputs(make_world(PRESETS[args.preset].world), tuple(args.n), args.requests, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
