"""FP8 step: selective PTQ, standard FP8 QDQ ONNX, accuracy of the exact graphs in ONNX Runtime.

    .venv/bin/python -m export.fp8 --preset tiny            # reports only (model.onnx untouched)
    .venv/bin/python -m export.build --preset tiny --fp8    # train/export, then serve the FP8 graphs

For user_tower, scorer_light and scorer_heavy: calibrate FP8 (export/sensitivity.py), measure
each layer's sensitivity, keep the most sensitive layers in FP16 until the whole model is within
budget, export with modelopt and rewrite to standard opset-19 QDQ (export/qdq.py). The embedding
table is stored in FP16 (see ``embedding_effect``). Writes, per engine model folder ``1/``:
``model.fp32.onnx`` and ``model.fp8.onnx``; with ``serve=True`` the FP8 set becomes ``model.onnx``
(what the CPU profile serves and the TensorRT build reads). Reports: ``reports/fp8.json`` and
``reports/fp8.md``, every accuracy figure measured through ONNX Runtime against the FP32 graphs.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import shutil
import tempfile
from pathlib import Path

import ml_dtypes
import onnx
import torch

from export.config import PRESETS
from export.evaluate import model_scores
from export.models import RankingModel
from export.onnx_eval import PIPELINE, output_error, pipeline_scores, sessions
from export.onnx_export import export_model
from export.qdq import fp16_embedding_storage, qdq_summary, to_standard_qdq
from export.sensitivity import (
    AUC_BUDGET,
    NDCG_BUDGET,
    PART_MODEL,
    effect,
    layer_sensitivity,
    layers,
    order_by_sensitivity,
    quantize,
    select,
    served_model,
)
from export.world import Requests, World, make_world

log = logging.getLogger("export.fp8")
ROOT = Path(__file__).resolve().parents[1]
FP32_FILE, FP8_FILE, SERVED_FILE = "model.fp32.onnx", "model.fp8.onnx", "model.onnx"
QUANTIZED_MODELS = tuple(PART_MODEL.values())  # user_tower, scorer_light, scorer_heavy
CALIBRATION_REQUESTS = 256
EMBEDDING_CHOICE = "fp16"


def calibration_requests(world: World) -> Requests:
    """Calibration data: requests from the world's training distribution (train seed), not the eval set."""
    return world.sample_requests(CALIBRATION_REQUESTS, world.cfg.train_candidates, world.train_seed)


@torch.no_grad()
def embedding_effect(model: RankingModel, reference: dict, requests: Requests) -> dict:
    """Accuracy effect of storing the unified table in FP16 and in FP8 (E4M3, per-row scale)."""
    table = model.embedding.table.data
    amax = table.abs().amax(dim=1, keepdim=True).clamp(min=1e-12)
    scale = amax / float(ml_dtypes.finfo(ml_dtypes.float8_e4m3fn).max)
    variants = {
        "fp16": table.half().float(),
        "fp8_e4m3_per_row": (table / scale).to(torch.float8_e4m3fn).float() * scale,
    }
    out = {}
    for name, values in variants.items():
        m = copy.deepcopy(model)
        m.embedding.table.data.copy_(values)
        out[name] = {
            **effect(model_scores(m, requests), reference, requests).to_dict(),
            "table_bytes": int(table.numel() * 2 if name == "fp16" else table.numel() + 4 * len(table)),
        }
    out["fp32_table_bytes"] = int(table.numel() * 4)
    out["choice"] = EMBEDDING_CHOICE
    out["reason"] = (
        "FP16 storage: the lookup is a Gather (no FP8 GEMM to gain), FP16 halves the table with an effect "
        "within rounding, and TensorRT's FP8 support is for QDQ around GEMM inputs, not Gather outputs; "
        "FP8 rows would halve it again at the measured accuracy cost above."
    )
    return out


def export_fp8(qmodel: RankingModel, model: RankingModel, folder: Path) -> dict[str, dict[str, int]]:
    """Write FP32 and FP8 graphs of the PIPELINE models into ``folder/<model>/1/``; return QDQ summaries."""
    summaries = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in PIPELINE:
            version = folder / name / "1"
            export_model(model, name, version / FP32_FILE)
            if name == "embedding_lookup":
                graph = fp16_embedding_storage(onnx.load(str(version / FP32_FILE)))
            else:
                raw = export_model(qmodel, name, Path(tmp) / f"{name}.onnx")
                graph = to_standard_qdq(onnx.load(str(raw)))
            onnx.checker.check_model(graph)
            onnx.save(graph, str(version / FP8_FILE))
            summaries[name] = qdq_summary(graph)
    return summaries


def measure_graphs(folder: Path, requests: Requests) -> dict[str, dict]:
    """Each FP8 graph alone (the others FP32), then all together, against the FP32 graphs in ONNX Runtime."""
    fp32 = sessions({n: folder / n / "1" / FP32_FILE for n in PIPELINE})
    fp8 = sessions({n: folder / n / "1" / FP8_FILE for n in PIPELINE})
    reference = pipeline_scores(fp32, requests)
    result = {}
    for name in PIPELINE:
        scores = pipeline_scores({**fp32, name: fp8[name]}, requests)
        result[name] = {
            "effect": effect(scores, reference, requests).to_dict(),
            "output_error": output_error(fp32, name, fp8[name], requests),
        }
    result["all"] = {"effect": effect(pipeline_scores(fp8, requests), reference, requests).to_dict()}
    return result


def run_fp8(
    model: RankingModel,
    world: World | None,
    requests: Requests,
    folder: Path,
    reports: Path,
    serve: bool,
    calibration: Requests | None = None,
    report_name: str = "fp8",
) -> dict:
    """The whole FP8 step for a trained ``model``; returns the report written to ``reports/<report_name>.json``.
    Calibrates on ``calibration``, else on the world's training distribution."""
    if calibration is None:
        if world is None:
            raise ValueError("run_fp8 needs a world or calibration requests")
        calibration = calibration_requests(world)
    reference = model_scores(model, requests)
    qmodel = quantize(model, calibration)
    sensitivity = layer_sensitivity(qmodel, reference, requests)
    precisions, steps = select(qmodel, sensitivity, reference, requests)
    rank = {name: i + 1 for i, name in enumerate(order_by_sensitivity(sensitivity))}
    table = [
        {
            "layer": name,
            "model": served_model(name),
            "shape": [layer.linear.in_features, layer.linear.out_features],
            "sensitivity_rank": rank[name],
            **{f"alone_fp8_{k}": v for k, v in sensitivity[name].to_dict().items()},
            "decision": precisions[name],
        }
        for name, layer in layers(qmodel).items()
    ]
    summaries = export_fp8(qmodel, model, folder)
    graphs = measure_graphs(folder, requests)
    models = {
        name: {
            "fp8_graph": f"{name}/1/{FP8_FILE}",
            "qdq": summaries[name],
            "fp8_layers": [r["layer"] for r in table if r["model"] == name and r["decision"] == "fp8"],
            "fp16_layers": [r["layer"] for r in table if r["model"] == name and r["decision"] == "fp16"],
            **graphs[name],
        }
        for name in PIPELINE
    }
    report = {
        "budget": {"auc_drop": AUC_BUDGET, "ndcg10_drop": NDCG_BUDGET},
        "eval_requests": [len(requests), requests.n_candidates],
        "calibration_requests": len(calibration),
        "layers": table,
        "selection_steps": steps,
        "embedding": embedding_effect(model, reference, requests),
        "models": models,
        "all_fp8_graphs": graphs["all"],
        "served": serve,
    }
    if serve:
        for name in PIPELINE:
            shutil.copyfile(folder / name / "1" / FP8_FILE, folder / name / "1" / SERVED_FILE)
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{report_name}.json").write_text(json.dumps(report, indent=2))
    (reports / f"{report_name}.md").write_text(markdown(report))
    return report


def markdown(report: dict) -> str:
    """The per-layer table and the per-model (ONNX Runtime) table of a report."""
    b = report["budget"]
    lines = [
        f"# FP8 selective PTQ (budget: AUC drop <= {b['auc_drop']}, NDCG@10 drop <= {b['ndcg10_drop']})",
        "",
        "Per layer, that layer alone in FP8 (PyTorch, modelopt fake quant), worst of light/heavy tiers:",
        "",
        "| layer | model | in x out | rank | AUC drop | NDCG@10 drop | score MAE | decision |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["layers"]:
        lines.append(
            f"| `{r['layer']}` | {r['model']} | {r['shape'][0]} x {r['shape'][1]} | {r['sensitivity_rank']} "
            f"| {r['alone_fp8_auc_drop']:+.5f} | {r['alone_fp8_ndcg10_drop']:+.5f} | {r['alone_fp8_score_mae']:.2e} "
            f"| {r['decision']} |"
        )
    lines += [
        "",
        "Exact graphs in ONNX Runtime against the FP32 graphs (each model's FP8 graph alone, then all):",
        "",
        "| model | Q/DQ nodes | FP8 weights | AUC drop | NDCG@10 drop | score MAE | output max abs err | in budget |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [(n, m) for n, m in report["models"].items()] + [("all", report["all_fp8_graphs"])]
    for name, m in rows:
        e, q = m["effect"], m.get("qdq", {})
        err = m.get("output_error", {}).get("max_abs")
        lines.append(
            f"| {name} | {q.get('quantize_linear', '')}/{q.get('dequantize_linear', '')} "
            f"| {q.get('fp8_initializers', '')} | {e['auc_drop']:+.5f} | {e['ndcg10_drop']:+.5f} "
            f"| {e['score_mae']:.2e} | {'' if err is None else f'{err:.2e}'} | {e['within_budget']} |"
        )
    emb = report["embedding"]
    lines += [
        "",
        f"Embedding table: **{emb['choice']}** storage. {emb['reason']}",
        "",
        "| storage | bytes | AUC drop | NDCG@10 drop | score MAE |",
        "|---|---|---|---|---|",
        f"| fp32 | {emb['fp32_table_bytes']} | 0 | 0 | 0 |",
    ]
    for key in ("fp16", "fp8_e4m3_per_row"):
        e = emb[key]
        lines.append(
            f"| {key} | {e['table_bytes']} | {e['auc_drop']:+.5f} | {e['ndcg10_drop']:+.5f} | {e['score_mae']:.2e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    from export.train import checkpoint_key, load_checkpoint

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports")
    parser.add_argument("--checkpoints", type=Path, default=ROOT / "checkpoints")
    parser.add_argument("--serve", action="store_true", help="make the FP8 graphs model.onnx (the served ones)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    preset = PRESETS[args.preset]
    ckpt = args.checkpoints / f"{preset.name}-{checkpoint_key(preset)}.pt"
    if not ckpt.exists():
        parser.error(f"{ckpt} is missing: run `make export PRESET={preset.name}` first")
    model, _ = load_checkpoint(preset, ckpt)
    world = make_world(preset.world)
    report = run_fp8(model, world, world.eval_requests(), args.model_repository, args.reports, args.serve)
    log.info("FP8 (%s): %s", args.preset, json.dumps(report["all_fp8_graphs"]["effect"]))
    log.info("layers kept in FP16: %s", [r["layer"] for r in report["layers"] if r["decision"] == "fp16"])


if __name__ == "__main__":
    main()
