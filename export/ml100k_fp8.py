"""FP8 sensitivity and selective PTQ on MovieLens-100k, with the full-ranking drops against FP32.

    .venv/bin/python -m export.ml100k_fp8        # make ml100k-fp8, after make export DATA=ml-100k

Loads the ml-100k checkpoint (export/ml100k.py), runs export/fp8.py's step (calibration on training
examples, per-layer sensitivity, selection within the AUC / NDCG budgets) on sampled requests of
the validation users (the target among ``SAMPLED`` items they have not seen), writes the FP32 and
FP8 QDQ graphs into a copy of the repository (``build/ml-100k/fp8/model_repository``, the FP8 set
served as model.onnx), and measures HR@10 / NDCG@10 / HR@50 / NDCG@50 / MRR of the test users under
full ranking through the in-process composition on the FP8 graphs against the FP32 graphs.
Reports: ``reports/fp8-ml-100k.{json,md}`` and ``fp8`` in ``reports/export-ml-100k.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from export.fp8 import run_fp8
from export.loo import Case, leave_one_out
from export.ml100k import (
    PRESETS,
    REPORT,
    REPOSITORY,
    ROOT,
    checkpoint_key,
    data_fingerprint,
    data_repository,
    evaluate_inprocess,
    load_checkpoint,
    served_cascade_m,
)
from export.movielens import MovieLens, load_ml100k, ml100k_dir
from export.next_item import draw_negatives, example_requests, positions
from export.onnx_eval import PIPELINE
from export.world import Requests
from serving.contract import ENGINE_MODELS
from serving.routing import RoutePolicy

log = logging.getLogger("export.ml100k_fp8")
SAMPLED = 127  # sampled candidates beside the target in the sensitivity requests
SENSITIVITY_USERS = 300
CALIBRATION_EXAMPLES = 256


def sampled_requests(data: MovieLens, cases: list[Case], n: int, seed: int = 0) -> Requests:
    """One request per case: its target and ``n`` of its other candidates, drawn without repeats."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in cases:
        others = np.delete(np.arange(c.candidate_ids.size), c.target_index)
        rows.append(np.concatenate([[c.target_index], rng.choice(others, size=n, replace=False)]))
    width = max(c.history_ids.size for c in cases)
    history = np.zeros((len(cases), width), dtype=np.int64)
    for i, c in enumerate(cases):
        history[i, : c.history_ids.size] = c.history_ids
    cand = np.stack([c.candidate_ids[r] for c, r in zip(cases, rows)])
    labels = np.zeros(cand.shape, dtype=np.float32)
    labels[:, 0] = 1.0
    return Requests(
        user_features=np.stack([c.user_features for c in cases]),
        history_ids=history,
        history_len=np.array([c.history_ids.size for c in cases], dtype=np.int64),
        candidate_ids=cand,
        candidate_features=data.features_of(cand),
        labels=labels,
        relevance=labels.copy(),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-100k")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--users", type=int, default=None, help="full-ranking evaluation on the first USERS test users")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    preset = PRESETS[args.preset]
    data_dir = ml100k_dir()
    data = load_ml100k(data_dir)
    split = leave_one_out(data, preset.history_max)
    ckpt = args.checkpoints / f"{preset.name}-{checkpoint_key(preset, data_fingerprint(data_dir))}.pt"
    if not ckpt.is_file():
        raise SystemExit(f"{ckpt} is missing: run make export DATA=ml-100k first")
    model, _ = load_checkpoint(preset, data.cardinalities, ckpt)
    rng = np.random.default_rng(1)
    pos = positions(split)
    cal_pos = pos[rng.integers(len(pos), size=CALIBRATION_EXAMPLES)]
    positive = np.array([split.train[r][t] for r, t in cal_pos])
    calibration = example_requests(data, split, cal_pos, draw_negatives(rng, data.items, positive, SAMPLED),
                                   preset.history_max)
    requests = sampled_requests(data, list(split.valid[:SENSITIVITY_USERS]), SAMPLED)
    fp8_repo = REPOSITORY.parent / "fp8" / "model_repository"
    data_repository(REPOSITORY, fp8_repo)
    for name in set(ENGINE_MODELS) - set(PIPELINE):  # not quantized (per_candidate_baseline): FP32 as exported
        shutil.copyfile(REPOSITORY / name / "1" / "model.onnx", fp8_repo / name / "1" / "model.onnx")
    report = run_fp8(model, None, requests, fp8_repo, args.reports, serve=True, calibration=calibration,
                     report_name="fp8-ml-100k")
    policy = RoutePolicy(cascade_m=served_cascade_m(fp8_repo))
    test = list(split.test[: args.users])
    fp32 = evaluate_inprocess(REPOSITORY, test, policy)
    fp8 = evaluate_inprocess(fp8_repo, test, policy)
    drops = {route: {k: fp32[route][k] - fp8[route][k] for k in fp32[route]} for route in fp32}
    summary = {"repository": str(fp8_repo.relative_to(ROOT)), "test_users": len(test), "fp32": fp32, "fp8": fp8,
               "drop": drops, "sampled_effect_all_fp8": report["all_fp8_graphs"]}
    path = args.reports / REPORT
    full = json.loads(path.read_text()) if path.is_file() else {}
    full["fp8"] = summary
    path.write_text(json.dumps(full, indent=2))
    for route in fp32:
        log.info("%s: HR@10 %.4f -> %.4f, NDCG@10 %.4f -> %.4f (FP32 -> FP8)", route, fp32[route]["hr10"],
                 fp8[route]["hr10"], fp32[route]["ndcg10"], fp8[route]["ndcg10"])


if __name__ == "__main__":
    main()
