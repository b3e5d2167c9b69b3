"""Train (if needed), prune, evaluate and export the models into the model repository.

    .venv/bin/python -m export.build --preset small        # or: make export PRESET=small

Writes ``model_repository/<model>/1/model.onnx`` for every engine model and the
evaluation report ``reports/export.json``. ``--fp8`` (``make fp8``) then runs the FP8 step
(export/fp8.py): the FP8 QDQ graphs become ``model.onnx``. The checkpoint in ``checkpoints/`` is
reused while the preset (and the checkpoint format) is unchanged.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch

from export.config import PRESETS
from export.evaluate import evaluate
from export.onnx_export import export_all
from export.train import build_model, checkpoint_key, load_checkpoint, row_usage, save_checkpoint, train
from export.world import make_world

log = logging.getLogger("export.build")
ROOT = Path(__file__).resolve().parents[1]


def run(
    preset_name: str, model_repository: Path, reports: Path, checkpoints: Path, retrain: bool, fp8: bool = False
) -> dict:
    preset = PRESETS[preset_name]
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    world = make_world(preset.world)
    eval_requests = world.eval_requests()
    ckpt = checkpoints / f"{preset.name}-{checkpoint_key(preset)}.pt"
    if ckpt.exists() and not retrain:
        log.info("reusing checkpoint %s (preset unchanged)", ckpt)
        model, info = load_checkpoint(preset, ckpt)
    else:
        t0 = time.perf_counter()
        train_requests = world.train_requests()
        log.info("world ready in %.1fs: %d train requests x %d candidates, click rate %.3f",
                 time.perf_counter() - t0, len(train_requests), train_requests.n_candidates,
                 float(train_requests.labels.mean()))
        model = build_model(preset)
        info = {"training": train(model, train_requests, preset)}
        info["eval_before_pruning"] = evaluate(model, world, eval_requests)
        usage = row_usage(model, train_requests)
        info["pruning"] = model.embedding.prune(usage >= preset.embedding.prune_min_count)
        save_checkpoint(model, ckpt, info)
    evaluation = evaluate(model, world, eval_requests)
    paths = export_all(model, model_repository)
    report = {
        "preset": preset.to_dict(),
        "checkpoint": str(ckpt.relative_to(ROOT) if ckpt.is_relative_to(ROOT) else ckpt),
        **info,
        "evaluation": evaluation,
        "pruning_effect": {
            k: {m: evaluation[k][m] - info["eval_before_pruning"][k][m] for m in ("auc", "ndcg10")}
            for k in ("light", "heavy")
        },
        "heavy_minus_light": {m: evaluation["heavy"][m] - evaluation["light"][m] for m in ("auc", "ndcg10")},
        "onnx_bytes": {name: p.stat().st_size for name, p in paths.items()},
    }
    if fp8:  # FP8 QDQ graphs become model.onnx (export/fp8.py); reports/fp8.json, reports/fp8.md
        from export.fp8 import run_fp8

        report["fp8"] = run_fp8(model, world, eval_requests, model_repository, reports, serve=True)["all_fp8_graphs"]
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "export.json").write_text(json.dumps(report, indent=2))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--retrain", action="store_true", help="train even if a matching checkpoint exists")
    parser.add_argument("--fp8", action="store_true", help="serve FP8 QDQ graphs (selective PTQ, export/fp8.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    report = run(args.preset, args.model_repository, args.reports, args.checkpoints, args.retrain, args.fp8)
    rows = [f"{name:>12}  AUC {m['auc']:.4f}  NDCG@10 {m['ndcg10']:.4f}" for name, m in report["evaluation"].items()]
    log.info("evaluation (%s):\n%s", args.preset, "\n".join(rows))
    log.info("pruning: %s", json.dumps(report["pruning"]))


if __name__ == "__main__":
    main()
