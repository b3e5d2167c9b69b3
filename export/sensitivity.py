"""Layer-wise selective FP8 PTQ with nvidia-modelopt: calibration, per-layer sensitivity, selection.

    .venv/bin/python -m export.fp8 --preset tiny     # runs these steps and writes reports/fp8.{json,md}

Every ``nn.Linear`` of the user tower and both scorers is a quantizable layer (FP8 E4M3,
per-tensor scales for weights and inputs, max calibration on the world's training
distribution). A layer is in one of three precisions: ``fp32`` (reference), ``fp8``
(modelopt's quantizers on: QDQ in the exported graph) or ``fp16`` (quantizers off, the GEMM
computed in FP16: a Cast-Gemm-Cast in the exported graph, which a strongly typed TensorRT
network runs in FP16). Everything else (LayerNorm, softmax, attention matmuls) stays FP32.

Sensitivity of a layer: that layer alone in FP8, every other layer FP32; the drop in AUC and
NDCG@10 (worst of the light and heavy tiers) and the scores' mean absolute error on evaluation
data. Selection: all layers FP8, then the most sensitive FP8 layer moves to FP16 until the whole
model is within the budget (AUC drop <= 0.001, NDCG@10 drop <= 0.005 against FP32).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import modelopt.torch.quantization as mtq
import numpy as np
import torch
import torch.nn.functional as F
from modelopt.torch.quantization.nn import TensorQuantizer
from torch import nn

from export.evaluate import metrics, model_scores
from export.models import RankingModel
from export.train import to_tensors
from export.world import Requests

log = logging.getLogger(__name__)

AUC_BUDGET = 0.001
NDCG_BUDGET = 0.005
TIERS = ("light", "heavy")
# RankingModel part -> the served graph it belongs to.
PART_MODEL = {"tower": "user_tower", "light": "scorer_light", "heavy": "scorer_heavy"}
PRECISIONS = ("fp32", "fp8", "fp16")


class SelectiveLinear(nn.Module):
    """A quantized Linear whose precision is chosen per layer (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:  # a modelopt QuantLinear
        super().__init__()
        self.linear = linear
        self.precision = "fp8"

    def set_precision(self, precision: str) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        for q in (self.linear.input_quantizer, self.linear.weight_quantizer):
            if precision == "fp8":
                q.enable()
            else:
                q.disable()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision != "fp16":
            return self.linear(x)
        w, b = self.linear.weight, self.linear.bias
        return F.linear(x.half(), w.half(), None if b is None else b.half()).float()


def quantize(model: RankingModel, calibration: Requests, batch: int = 64) -> RankingModel:
    """A calibrated FP8 copy of ``model``: every Linear of tower, light and heavy wrapped in SelectiveLinear."""
    qmodel = copy.deepcopy(model).eval()

    def forward_loop(m: nn.Module) -> None:
        with torch.no_grad():
            for start in range(0, len(calibration), batch):
                m(**to_tensors(calibration.subset(slice(start, start + batch))))

    for part in PART_MODEL:
        getattr(qmodel, part).requires_grad_(False)
    mtq.quantize(qmodel, mtq.FP8_DEFAULT_CFG, forward_loop=forward_loop)
    for module in qmodel.modules():  # modelopt also wraps LayerNorm and Embedding: only Linear layers are quantizable
        if not isinstance(module, nn.Linear):
            for child in module.children():
                if isinstance(child, TensorQuantizer):
                    child.disable()
    for part in PART_MODEL:
        root = getattr(qmodel, part)
        for name, module in list(root.named_modules()):
            if isinstance(module, nn.Linear) and hasattr(module, "weight_quantizer"):
                parent_name, _, child = name.rpartition(".")
                parent = root.get_submodule(parent_name) if parent_name else root
                setattr(parent, child, SelectiveLinear(module))
    return qmodel


def layers(qmodel: RankingModel) -> dict[str, SelectiveLinear]:
    """{"tower.blocks.0.qkv": layer, ...}: every quantizable layer, in model order."""
    return {
        f"{part}.{name}": m
        for part in PART_MODEL
        for name, m in getattr(qmodel, part).named_modules()
        if isinstance(m, SelectiveLinear)
    }


def served_model(layer: str) -> str:
    return PART_MODEL[layer.split(".")[0]]


def set_precisions(qmodel: RankingModel, precisions: dict[str, str]) -> None:
    """Set every layer's precision; layers not named in ``precisions`` become fp32."""
    unknown = set(precisions) - set(layers(qmodel))
    if unknown:
        raise ValueError(f"unknown layers {sorted(unknown)}")
    for name, layer in layers(qmodel).items():
        layer.set_precision(precisions.get(name, "fp32"))


@dataclass(frozen=True)
class Effect:
    """Accuracy effect against FP32: drops are FP32 minus quantized (positive = worse), worst tier."""

    auc_drop: float
    ndcg10_drop: float
    score_mae: float  # mean |p - p_fp32| over candidates, worst tier
    score_max_abs: float

    @property
    def within_budget(self) -> bool:
        return self.auc_drop <= AUC_BUDGET and self.ndcg10_drop <= NDCG_BUDGET

    @property
    def sensitivity(self) -> float:
        """Budget-normalised accuracy drop; the ordering key (ties broken by score_mae)."""
        return max(self.auc_drop / AUC_BUDGET, self.ndcg10_drop / NDCG_BUDGET, 0.0)

    def to_dict(self) -> dict[str, float | bool]:
        return {**self.__dict__, "within_budget": self.within_budget}


def effect(scores: dict[str, np.ndarray], reference: dict[str, np.ndarray], requests: Requests) -> Effect:
    """Effect of ``scores`` against ``reference`` ({tier: (R, n) probabilities}) on ``requests``."""
    ref_m = {t: metrics(reference[t], requests) for t in TIERS}
    cur_m = {t: metrics(scores[t], requests) for t in TIERS}
    err = {t: np.abs(scores[t].astype(np.float64) - reference[t]) for t in TIERS}
    return Effect(
        auc_drop=max(ref_m[t]["auc"] - cur_m[t]["auc"] for t in TIERS),
        ndcg10_drop=max(ref_m[t]["ndcg10"] - cur_m[t]["ndcg10"] for t in TIERS),
        score_mae=max(float(e.mean()) for e in err.values()),
        score_max_abs=max(float(e.max()) for e in err.values()),
    )


def measure(qmodel: RankingModel, precisions: dict[str, str], reference: dict, requests: Requests) -> Effect:
    set_precisions(qmodel, precisions)
    return effect(model_scores(qmodel, requests), reference, requests)


def layer_sensitivity(qmodel: RankingModel, reference: dict, requests: Requests) -> dict[str, Effect]:
    """Each layer alone in FP8 (the rest FP32) -> its Effect."""
    return {name: measure(qmodel, {name: "fp8"}, reference, requests) for name in layers(qmodel)}


def order_by_sensitivity(sensitivity: dict[str, Effect]) -> list[str]:
    """Most sensitive first: budget-normalised accuracy drop, then score error."""
    return sorted(sensitivity, key=lambda n: (sensitivity[n].sensitivity, sensitivity[n].score_mae), reverse=True)


def select(
    qmodel: RankingModel, sensitivity: dict[str, Effect], reference: dict, requests: Requests
) -> tuple[dict[str, str], list[dict]]:
    """Greedy selection: all FP8, then the most sensitive FP8 layer to FP16 until within budget.

    Returns the precision of every layer and the steps taken (layer moved, whole-model Effect)."""
    precisions = {name: "fp8" for name in layers(qmodel)}
    steps: list[dict] = []
    for name in [None, *order_by_sensitivity(sensitivity)]:
        if name is not None:
            precisions[name] = "fp16"
        result = measure(qmodel, precisions, reference, requests)
        steps.append({"moved_to_fp16": name, **result.to_dict()})
        log.info("selection: %s to fp16 -> %s", name, result)
        if result.within_budget:
            break
    set_precisions(qmodel, precisions)
    return precisions, steps
