"""Training on the synthetic world (CPU), with checkpoints keyed by the preset.

    .venv/bin/python -m export.build --preset small   # trains if needed, then evaluates and exports

Light and heavy scorers are trained jointly on one shared embedding table and user
tower (the served user state is shared by both tiers): loss = BCE(light) + BCE(heavy).
A training batch is ``batch_requests`` requests, each with its own candidates, so the
user tower runs once per request here too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.config import Preset, cardinalities
from export.models import RankingModel
from export.world import Requests
from serving.contract import CANDIDATE_FEATURES, ITEM_FEATURE, USER_FEATURES

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3  # bump when the model code changes what a checkpoint means


def build_model(preset: Preset) -> RankingModel:
    torch.manual_seed(preset.train.seed)
    return RankingModel(preset.embedding, preset.tower, preset.light, preset.heavy, cardinalities(preset.world))


def to_tensors(req: Requests) -> dict[str, torch.Tensor]:
    """A batch of requests as model inputs, history trimmed to the longest in the batch."""
    width = int(req.history_len.max())
    return {
        "user_features": torch.from_numpy(req.user_features),  # (B, F_U)
        "history_ids": torch.from_numpy(np.ascontiguousarray(req.history_ids[:, :width])),  # (B, L)
        "history_len": torch.from_numpy(req.history_len),  # (B,)
        "candidate_ids": torch.from_numpy(req.candidate_ids),  # (B, n)
        "candidate_features": torch.from_numpy(req.candidate_features),  # (B, n, F_C)
    }


class RankingTrain(nn.Module):
    """Training wrapper: holds the loss, nothing else."""

    def __init__(self, model: RankingModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        light, heavy = self.model(**batch)  # (B, n) logits each
        loss_light = F.binary_cross_entropy_with_logits(light, labels)
        loss_heavy = F.binary_cross_entropy_with_logits(heavy, labels)
        return loss_light + loss_heavy, {"light": loss_light.item(), "heavy": loss_heavy.item()}


def checkpoint_key(preset: Preset) -> str:
    blob = json.dumps({"format": CHECKPOINT_FORMAT, **preset.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def row_usage(model: RankingModel, requests: Requests) -> torch.Tensor:
    """How often each hashed table row is looked up by ``requests`` -> (total_rows,) int64."""
    emb = model.embedding
    t = to_tensors(requests)
    hist_valid = torch.arange(t["history_ids"].shape[1]) < t["history_len"].unsqueeze(1)
    rows = [
        emb.rows(t["user_features"], USER_FEATURES).flatten(),
        emb.rows(t["history_ids"].unsqueeze(-1), (ITEM_FEATURE,)).squeeze(-1)[hist_valid],
        emb.rows(t["candidate_ids"].unsqueeze(-1), (ITEM_FEATURE,)).flatten(),
        emb.rows(t["candidate_features"], CANDIDATE_FEATURES).flatten(),
    ]
    return torch.bincount(torch.cat(rows), minlength=emb.total_rows)


def train(model: RankingModel, requests: Requests, preset: Preset) -> dict[str, float]:
    """Train in place; returns the final losses and the wall time."""
    cfg = preset.train
    rng = np.random.default_rng(cfg.seed)
    wrapper = RankingTrain(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    start, recent = time.perf_counter(), []
    for step in range(1, cfg.steps + 1):
        idx = rng.choice(len(requests), size=min(cfg.batch_requests, len(requests)), replace=False)
        batch = requests.subset(np.sort(idx))
        loss, parts = wrapper(to_tensors(batch), torch.from_numpy(batch.labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        recent.append(parts)
        if step % max(cfg.steps // 20, 1) == 0 or step == cfg.steps:
            light = np.mean([p["light"] for p in recent])
            heavy = np.mean([p["heavy"] for p in recent])
            log.info("step %d/%d  loss light %.4f heavy %.4f  %.0fs", step, cfg.steps, light, heavy,
                     time.perf_counter() - start)
            recent = []
    model.eval()
    return {"loss_light": float(light), "loss_heavy": float(heavy), "train_seconds": time.perf_counter() - start}


def save_checkpoint(model: RankingModel, path: Path, info: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "info": info}, path)


def load_checkpoint(preset: Preset, path: Path) -> tuple[RankingModel, dict]:
    """Rebuild the model for ``preset`` and load ``path`` (the table may be pruned)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(preset)
    table = blob["state_dict"]["embedding.table"]
    model.embedding.table = nn.Parameter(torch.empty_like(table))  # pruned tables are smaller
    model.load_state_dict(blob["state_dict"])
    return model.eval(), blob["info"]
