"""MovieLens-100k end to end: train, export and evaluate offline under the leave-one-out protocol.

    .venv/bin/python -m export.ml100k                 # make export DATA=ml-100k (then the served run)
    .venv/bin/python -m export.ml100k --table         # the README table from reports/export-ml-100k.json

Loads the data (export/movielens.py), splits it (export/loo.py), trains the user tower, light and
heavy on the training part (export/next_item.py; the checkpoint in ``checkpoints/`` is reused while
the preset, the data and the checkpoint format are unchanged), prunes the table as for the world,
exports the ONNX graphs into their own repository (``build/ml-100k/model_repository``: the
project's configs copied, this data's graphs; ``model_repository/`` keeps the world's), and writes
``reports/export-ml-100k.json``: per split, HR@10, NDCG@10, HR@50, NDCG@50 and MRR of light, heavy,
the cascade (heavy re-scores light's top M, M as the served ranker config sets it) and the
baselines (export/baselines.py), and the test users through the in-process composition
(serving/inprocess.py) on the exported graphs. client/ml100k_eval.py adds the served run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from export.baselines import fit_baselines
from export.config import EmbeddingConfig, HeavyConfig, LightConfig, UserTowerConfig
from export.loo import Case, Split, leave_one_out
from export.metrics import loo_metrics, paired_bootstrap, per_user_metrics
from export.models import RankingModel
from export.movielens import MovieLens, load_ml100k, ml100k_dir
from export.next_item import NextItemConfig, RealDataPreset, build_model, row_usage, train_next_item
from export.onnx_export import export_all
from export.train import to_tensors
from serving.composition import cascade
from serving.contract import as_request
from serving.inprocess import InProcessRanker
from serving.routing import RoutePolicy

log = logging.getLogger("export.ml100k")
ROOT = Path(__file__).resolve().parents[1]
SOURCE_REPOSITORY = ROOT / "model_repository"
REPOSITORY = ROOT / "build" / "ml-100k" / "model_repository"
REPORT = "export-ml-100k.json"
CHECKPOINT_FORMAT = 1  # bump when what a checkpoint means changes
K = 10  # the cascade's M covers the top 10 (the ranker's default_top_k)
GENERATED = ("*.onnx", "*.onnx.data", "*.plan", "*.json", "*.npz", "__pycache__", "*.pyc")
METRIC_NAMES = {"hr10": "HR@10", "ndcg10": "NDCG@10", "hr50": "HR@50", "ndcg50": "NDCG@50", "mrr": "MRR"}

_EMBEDDING = EmbeddingConfig(dim=32, row_budget=4_000, min_buckets=16, prune_min_count=1)
PRESETS: dict[str, RealDataPreset] = {
    # d_model 32, one tower layer, the 50 most recent items as history (the protocol allows up to 200):
    # on one shared core a step of 64 examples took 0.38 s at 200 and 0.13 s at 50; in the same ~7.5 min,
    # 1,000 steps at 200 reached validation HR@10 0.155, 3,000 steps at 50 reached 0.201 (lr 5e-3, weight
    # decay 1e-5) and 0.207, NDCG@10 0.107 instead of 0.101, with lr 1e-2 and weight decay 0.05.
    # Validation heavy HR@10 / NDCG@10 on one thread (co-occurrence 0.194 / 0.104), 3,000 steps: 0.207 /
    # 0.107 as above; negatives among unseen items 0.209 / 0.112; and item rows from PMI-SVD (window 10)
    # 0.216 / 0.114 (window 3: 0.200 / 0.105, window 50: 0.212 / 0.109); 5,000 steps 0.220 / 0.114
    # (seed 1: 0.219 / 0.116). Tower dropout 0.2 and an EMA of the weights gave nothing.
    "ml-100k": RealDataPreset(
        name="ml-100k",
        embedding=_EMBEDDING,
        tower=UserTowerConfig(d_model=32, n_heads=2, n_layers=1),
        light=LightConfig(hidden=(64, 32)),
        heavy=HeavyConfig(n_heads=2, hidden=(64, 32)),
        train=NextItemConfig(steps=5_000, batch_requests=64, negatives=127, lr=1e-2, weight_decay=0.05,
                             unseen_negatives=True, pmi_window=10),
        history_max=50,
    ),
    # tests: seconds
    "ml-100k-tiny": RealDataPreset(
        name="ml-100k-tiny",
        embedding=replace(_EMBEDDING, dim=8),
        tower=UserTowerConfig(d_model=8, n_heads=2, n_layers=1, ff_mult=1),
        light=LightConfig(hidden=(8,)),
        heavy=HeavyConfig(n_heads=2, hidden=(8,)),
        train=NextItemConfig(steps=20, batch_requests=16, negatives=15, unseen_negatives=True, pmi_window=10),
    ),
}


def served_cascade_m(repository: Path, config_name: str = "cpu") -> int:
    """The ranker's cascade_m in the config that Triton serves (configs/<name>.pbtxt, else config.pbtxt)."""
    path = repository / "ranker" / "configs" / f"{config_name}.pbtxt"
    if not path.is_file():
        path = repository / "ranker" / "config.pbtxt"
    config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return int(config.parameters["cascade_m"].string_value)


def data_repository(source: Path, dest: Path) -> None:
    """``dest``: a fresh copy of ``source``'s configs and entry points, without generated graphs."""
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(*GENERATED))


def data_fingerprint(directory: Path) -> str:
    h = hashlib.sha256()
    for name in sorted(p.name for p in directory.iterdir() if p.is_file()):
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()[:12]


def checkpoint_key(preset: RealDataPreset, fingerprint: str) -> str:
    blob = json.dumps({"format": CHECKPOINT_FORMAT, "data": fingerprint, **asdict(preset)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def save_checkpoint(model: RankingModel, path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "info": info}, path)


def load_checkpoint(preset: RealDataPreset, cardinalities: dict[str, int], path: Path) -> tuple[RankingModel, dict]:
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(preset, cardinalities)
    table = blob["state_dict"]["embedding.table"]
    model.embedding.table = torch.nn.Parameter(torch.empty_like(table))  # the pruned table is smaller
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["info"]


@torch.no_grad()
def tier_scores(model: RankingModel, cases: tuple[Case, ...] | list[Case]) -> dict[str, list[np.ndarray]]:
    """Light and heavy probabilities (float32, as served) per case, one forward pass per user."""
    model.eval()
    out: dict[str, list[np.ndarray]] = {"light": [], "heavy": []}
    for case in cases:
        light, heavy = model(**to_tensors(case.as_requests()))  # (1, N) logits each
        out["light"].append(torch.sigmoid(light[0]).numpy())
        out["heavy"].append(torch.sigmoid(heavy[0]).numpy())
    return out


def per_user_cases(
    model: RankingModel, cases: list[Case], baselines: dict, policy: RoutePolicy
) -> dict[str, dict[str, np.ndarray]]:
    """{scorer: {metric: (U,) per user}} for the tiers, the cascade at the served M and the baselines."""
    s = tier_scores(model, cases)
    table = {
        "light": s["light"],
        "heavy": s["heavy"],
        "cascade": [cascade(lo, policy.cascade_size(lo.size, K), lambda top, hi=hi: hi[top])
                    for lo, hi in zip(s["light"], s["heavy"])],
        **{name: [f(c) for c in cases] for name, f in baselines.items()},
    }
    targets = [c.target_index for c in cases]
    return {name: per_user_metrics(scores, targets) for name, scores in table.items()}


def means(per_user: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """{scorer: {metric: mean over the users}} of ``per_user_cases``."""
    return {name: {key: float(v.mean()) for key, v in metrics.items()} for name, metrics in per_user.items()}


def heavy_against_baselines(per_user: dict[str, dict[str, np.ndarray]], baselines: list[str]) -> dict[str, dict]:
    """{baseline: {metric: paired bootstrap of heavy - baseline over the same users}}."""
    return {name: {key: paired_bootstrap(per_user["heavy"][key], per_user[name][key]) for key in METRIC_NAMES}
            for name in baselines}  # fmt: skip


def evaluate_inprocess(repository: Path, cases: list[Case], policy: RoutePolicy) -> dict[str, dict[str, float]]:
    """The exported graphs through the in-process composition, one request per user and route."""
    ranker = InProcessRanker(repository, policy=policy)
    targets = [c.target_index for c in cases]
    out = {}
    for route in ("light", "heavy", "cascade"):
        scores = [ranker.rank(_as_request(c), route, K).scores for c in cases]
        out[route] = loo_metrics(scores, targets)
    return out


def _as_request(case: Case) -> dict[str, np.ndarray]:
    return as_request(case.fields())


def train_or_load(
    preset: RealDataPreset, data: MovieLens, split: Split, checkpoints: Path, fingerprint: str, retrain: bool
) -> tuple[RankingModel, dict, Path]:
    ckpt = checkpoints / f"{preset.name}-{checkpoint_key(preset, fingerprint)}.pt"
    if ckpt.exists() and not retrain:
        log.info("reusing checkpoint %s (preset and data unchanged)", ckpt)
        model, info = load_checkpoint(preset, data.cardinalities, ckpt)
        return model, info, ckpt
    model = build_model(preset, data.cardinalities)
    info = {"training": train_next_item(model, data, split, preset)}
    usage = row_usage(model, data, split, preset.history_max)
    info["pruning"] = model.embedding.prune(usage >= preset.embedding.prune_min_count)
    save_checkpoint(model, ckpt, info)
    return model, info, ckpt


def run(
    preset_name: str,
    repository: Path = REPOSITORY,
    reports: Path = ROOT / "reports",
    checkpoints: Path = ROOT / "checkpoints",
    retrain: bool = False,
    users: int | None = None,
    data_dir: Path | None = None,
) -> dict:
    """Train or reuse, export into ``repository``, evaluate; ``users`` limits the evaluation to the first users."""
    preset = PRESETS[preset_name]
    data_dir = data_dir or ml100k_dir()
    data = load_ml100k(data_dir)
    split = leave_one_out(data, preset.history_max)
    model, info, ckpt = train_or_load(preset, data, split, checkpoints, data_fingerprint(data_dir), retrain)
    data_repository(SOURCE_REPOSITORY, repository)
    export_all(model, repository)
    policy = RoutePolicy(cascade_m=served_cascade_m(repository))
    baselines = fit_baselines(split.train, data.cardinalities["item_id"])
    valid, test = list(split.valid[:users]), list(split.test[:users])
    t0 = time.perf_counter()
    parts = {"valid": valid, "test": test}
    per_user = {part: per_user_cases(model, cases, baselines, policy) for part, cases in parts.items()}
    offline = {part: means(p) for part, p in per_user.items()}
    log.info("offline evaluation in %.0fs", time.perf_counter() - t0)
    inprocess = evaluate_inprocess(repository, test, policy)
    n_cand = [c.candidate_ids.size for c in test]
    heavy_ndcg = offline["test"]["heavy"]["ndcg10"]
    report = {
        "data": {"name": "ml-100k", "source": str(data_dir), "interactions": int(data.seq_items.size),
                 "users": int(data.users.size), "items": int(data.items.size), "cardinalities": data.cardinalities},
        "protocol": {"split": "leave-one-out", "history_max": preset.history_max, "test_users": len(test),
                     "candidates": {"min": min(n_cand), "mean": float(np.mean(n_cand)), "max": max(n_cand)},
                     "training_interactions": int(sum(s.size for s in split.train))},
        "preset": asdict(preset),
        "checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
        "repository": str(repository.relative_to(ROOT) if repository.is_relative_to(ROOT) else repository),
        "cascade_m": policy.cascade_m,
        **info,
        "offline": offline,
        "inprocess_test": inprocess,
        "cascade_over_heavy_ndcg10": offline["test"]["cascade"]["ndcg10"] / heavy_ndcg if heavy_ndcg else None,
        # How clearly heavy beats each baseline on the test users: 10,000 paired resamplings of the users.
        "heavy_vs_baselines_test": heavy_against_baselines(per_user["test"], list(baselines)),
    }
    reports.mkdir(parents=True, exist_ok=True)
    (reports / REPORT).write_text(json.dumps(report, indent=2))
    return report


def markdown_table(report: dict) -> str:
    """Per route and baseline: the five metrics on the test users and the served p50 latency."""
    served = report.get("served", {}).get("routes", {})
    head = "| | " + " | ".join(METRIC_NAMES.values()) + " | p50 ms |"
    rows = [head, "|" + "---|" * (len(METRIC_NAMES) + 2)]
    for name, metrics in served.items():
        cells = [f"{metrics[k]:.4f}" for k in METRIC_NAMES]
        rows.append(f"| {name} (served) | " + " | ".join(cells) + f" | {metrics['p50_ms']:.1f} |")
    for name, metrics in report["offline"]["test"].items():
        if name in served:
            continue
        cells = [f"{metrics[k]:.4f}" for k in METRIC_NAMES]
        rows.append(f"| {name} (offline) | " + " | ".join(cells) + " | |")
    versus = report.get("heavy_vs_baselines_test", {})
    if versus:
        rows += ["", "| heavy minus (test users; 95% interval, paired bootstrap) | " + " | ".join(METRIC_NAMES.values())
                 + " |", "|" + "---|" * (len(METRIC_NAMES) + 1)]
        for name, by_metric in versus.items():
            cells = [f"{b['diff']:+.4f} [{b['ci95_low']:+.4f}, {b['ci95_high']:+.4f}]"
                     for b in (by_metric[k] for k in METRIC_NAMES)]
            rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="ml-100k")
    parser.add_argument("--model-repository", type=Path, default=REPOSITORY)
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--retrain", action="store_true", help="train even if a matching checkpoint exists")
    parser.add_argument("--users", type=int, default=None, help="evaluate only the first USERS users")
    parser.add_argument("--table", action="store_true", help="print the README table of the last report and exit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if args.table:
        print(markdown_table(json.loads((args.reports / REPORT).read_text())))
        return
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    report = run(args.preset, args.model_repository, args.reports, args.checkpoints, args.retrain, args.users)
    rows = [f"{name:>13}  " + "  ".join(f"{METRIC_NAMES[k]} {m[k]:.4f}" for k in METRIC_NAMES)
            for name, m in report["offline"]["test"].items()]
    log.info("test users, offline:\n%s", "\n".join(rows))
    log.info("cascade (M=%d) / heavy NDCG@10: %s", report["cascade_m"], report["cascade_over_heavy_ndcg10"])


if __name__ == "__main__":
    main()
