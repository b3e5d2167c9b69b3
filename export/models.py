"""The ranking network, built from small named parts.

Sizes (set by the preset, see export/config.py):
    E   embedding width          D   user tower width (user_state, history_kv)
    F_U user features            C   candidate tokens = item id + F_C features
    L   history length           N   candidates        B   users in one scorer call

Parts and their interfaces:
    EmbeddingLookup   raw int64 values (..., F) -> embeddings (..., F, E); hashing in-graph
    UserTower         user_emb (B, F_U, E), history_emb (B, L, E) -> user_state (B, D), history_kv (B, L, D)
    ScorerLight       user_state (B, D), candidate_emb (N, C, E), candidate_user (N,) -> logits (N,)
    ScorerHeavy       user_state (B, D), history_kv (B, L, D), history_len (B,), candidate_emb (B, n, C, E)
                      -> logits (B, n): target attention over each block's own user's history

Both scorers broadcast the user side: the first layer over [user; candidate] is split, the
user part is projected once per user (B rows) and added to its candidates (light: gathered
by ``candidate_user``; heavy: by block). Nothing user-sized is tiled N times.
Core modules return logits; export/serving.py wraps them into the served graphs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from export.config import EmbeddingConfig, HeavyConfig, LightConfig, UserTowerConfig
from serving.contract import C_TOKENS, CANDIDATE_FEATURES, EMBEDDED_FEATURES, ITEM_FEATURE, USER_FEATURES

HASH_PRIME = 2_147_483_647  # 2**31 - 1: (x mod P) * A + B stays below 2**63 for A, B < 2**31
MASK_VALUE = -1e4  # masked attention logit: finite so FP16/FP8 engines never see inf - inf


def hash_plan(cardinalities: dict[str, int], cfg: EmbeddingConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Feature-adaptive hashing: buckets, hash constants and table offsets per feature.

    Features whose cardinality fits their fair share of ``cfg.row_budget`` get one row
    per value (multiplier 1, increment 0: row = value mod cardinality, collision-free);
    the rest share the remaining rows in proportion to their cardinality (at least
    ``cfg.min_buckets``) and are hashed with a random universal hash mod P.
    Returns int64 arrays in EMBEDDED_FEATURES order: buckets, mult, add, offset.
    """
    names = list(EMBEDDED_FEATURES)
    card = np.array([cardinalities[n] for n in names], dtype=np.int64)
    if (card < 1).any():
        raise ValueError(f"cardinalities must be >= 1, got {dict(zip(names, card.tolist()))}")
    buckets = np.zeros_like(card)
    direct = np.zeros(len(names), dtype=bool)
    budget = cfg.row_budget
    # Grant exact rows to the smallest features while they fit the fair share of what is left.
    for i in np.argsort(card, kind="stable"):
        remaining = int((~direct).sum())
        if card[i] <= budget / remaining:
            direct[i], buckets[i] = True, card[i]
            budget -= int(card[i])
    hashed = ~direct
    if hashed.any():
        share = card[hashed] / card[hashed].sum() * max(budget, 0)
        buckets[hashed] = np.maximum(share.astype(np.int64), cfg.min_buckets)
    rng = np.random.default_rng(seed)
    mult = np.where(direct, 1, rng.integers(1, HASH_PRIME, len(names)))
    add = np.where(direct, 0, rng.integers(0, HASH_PRIME, len(names)))
    offset = np.concatenate([[0], np.cumsum(buckets)[:-1]])
    return {"buckets": buckets, "mult": mult.astype(np.int64), "add": add.astype(np.int64), "offset": offset}


class EmbeddingLookup(nn.Module):
    """One unified table for every feature; raw ids are hashed inside the graph.

    row = offset[f] + ((x mod P) * mult[f] + add[f]) mod P mod buckets[f]   (int64, no overflow)
    emb = table[remap[row]]   remap sends pruned rows to row 0, the shared fallback row.
    """

    def __init__(self, cfg: EmbeddingConfig, cardinalities: dict[str, int]) -> None:
        super().__init__()
        plan = hash_plan(cardinalities, cfg)
        for key, value in plan.items():
            self.register_buffer(f"hash_{key}", torch.from_numpy(value))
        self.total_rows = int(plan["buckets"].sum())
        self.table = nn.Parameter(torch.randn(self.total_rows, cfg.dim) * 0.05)
        # Identity until prune(): int32 keeps the remap at 4 bytes per hashed row.
        self.register_buffer("remap", torch.arange(self.total_rows, dtype=torch.int32))
        self.dim = cfg.dim

    def rows(self, values: torch.Tensor, features: tuple[str, ...]) -> torch.Tensor:
        """Hashed row of each raw value: values (..., F) int64 -> (..., F) int64."""
        idx = [EMBEDDED_FEATURES.index(f) for f in features]
        mult, add = self.hash_mult[idx], self.hash_add[idx]
        buckets, offset = self.hash_buckets[idx], self.hash_offset[idx]
        h = torch.remainder(torch.remainder(values, HASH_PRIME) * mult + add, HASH_PRIME)
        return torch.remainder(h, buckets) + offset

    def embed(self, values: torch.Tensor, features: tuple[str, ...]) -> torch.Tensor:
        """(..., F) int64 -> (..., F, E) float32."""
        return F.embedding(self.remap[self.rows(values, features)], self.table)

    def forward(
        self,
        user_features: torch.Tensor,  # (..., F_U)
        history_ids: torch.Tensor,  # (..., L)
        candidate_ids: torch.Tensor,  # (..., N)
        candidate_features: torch.Tensor,  # (..., N, F_C)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        user_emb = self.embed(user_features, USER_FEATURES)  # (..., F_U, E)
        history_emb = self.embed(history_ids.unsqueeze(-1), (ITEM_FEATURE,)).squeeze(-2)  # (..., L, E)
        item = self.embed(candidate_ids.unsqueeze(-1), (ITEM_FEATURE,))  # (..., N, 1, E)
        feats = self.embed(candidate_features, CANDIDATE_FEATURES)  # (..., N, F_C, E)
        return user_emb, history_emb, torch.cat([item, feats], dim=-2)  # (..., N, C, E)

    @torch.no_grad()
    def prune(self, keep: torch.Tensor) -> dict[str, float]:
        """Drop rows where ``keep`` (total_rows,) is False; they share fallback row 0.

        The fallback row is the mean of the pruned rows, so a pruned id still gets an
        average embedding of its kind rather than noise. Returns memory figures.
        """
        keep = keep.to(torch.bool)
        old_table = self.table.data[self.remap.long()]  # (total_rows, E), undo any earlier pruning
        fallback = old_table[~keep].mean(0, keepdim=True) if (~keep).any() else torch.zeros(1, self.dim)
        new_index = torch.cumsum(keep.to(torch.int32), 0, dtype=torch.int32)  # kept rows -> 1..K
        self.remap = torch.where(keep, new_index, torch.zeros_like(new_index))
        self.table = nn.Parameter(torch.cat([fallback, old_table[keep]], 0))
        bytes_before = self.total_rows * self.dim * 4
        bytes_after = self.table.numel() * 4 + self.remap.numel() * 4
        return {
            "rows_total": float(self.total_rows),
            "rows_kept": float(keep.sum()),
            "table_bytes_before": float(bytes_before),
            "table_bytes_after": float(bytes_after),
            "memory_saved_fraction": 1.0 - bytes_after / bytes_before,
        }


def attention_logits(
    q: torch.Tensor,  # (G, n, H, dh)
    k: torch.Tensor,  # (G, T, H, dh)
    valid: torch.Tensor,  # (G, n or 1, T) bool: which keys each query may see
    head_dim: int,  # a Python int, so the scale is a constant in the exported graph
) -> torch.Tensor:
    """Scaled, masked attention logits -> (G, H, n, T)."""
    logits = torch.matmul(q.transpose(1, 2), k.permute(0, 2, 3, 1)) / math.sqrt(head_dim)
    return logits.masked_fill(~valid.unsqueeze(1), MASK_VALUE)


def attend(logits: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax over keys: logits (G, H, n, T), v (G, T, H, dh) -> (G, n, H * dh)."""
    out = torch.matmul(torch.softmax(logits, dim=-1), v.transpose(1, 2))  # (G, H, n, dh)
    return out.transpose(1, 2).flatten(2)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, head_dim: int
) -> torch.Tensor:
    """Masked multi-head attention -> (G, n, H * dh). Plain matmuls: exports cleanly."""
    return attend(attention_logits(q, k, valid, head_dim), v)


class Block(nn.Module):
    """Pre-LN transformer block (nanoGPT style) with a key padding mask."""

    def __init__(self, d: int, n_heads: int, ff_mult: int) -> None:
        super().__init__()
        if d % n_heads:
            raise ValueError(f"d_model {d} is not divisible by n_heads {n_heads}")
        self.n_heads, self.d_model = n_heads, d
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff_mult * d), nn.GELU(), nn.Linear(ff_mult * d, d))

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]  # x (B, T, D), valid (B, 1, T)
        d = self.d_model
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.n_heads, d // self.n_heads).unbind(2)
        x = x + self.proj(attention(q, k, v, valid, d // self.n_heads))
        return x + self.ff(self.ln2(x))


class UserTower(nn.Module):
    """Transformer over [summary token; user feature tokens; history tokens].

    History positions count back from the most recent item (recency), so the same
    item at the same recency gets the same encoding whatever L is.
    """

    def __init__(self, cfg: UserTowerConfig, emb_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.in_proj = nn.Linear(emb_dim, d)
        self.summary = nn.Parameter(torch.zeros(1, 1, d))
        self.feature_type = nn.Parameter(torch.randn(1, len(USER_FEATURES), d) * 0.02)
        self.recency = nn.Embedding(cfg.max_len, d)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.ff_mult) for _ in range(cfg.n_layers))
        self.ln = nn.LayerNorm(d)
        self.d_model = d

    def forward(
        self,
        user_emb: torch.Tensor,  # (B, F_U, E)
        history_emb: torch.Tensor,  # (B, L, E)
        history_len: torch.Tensor | None = None,  # (B,) int64; None: all L valid
    ) -> tuple[torch.Tensor, torch.Tensor]:
        b, n_hist = history_emb.shape[0], history_emb.shape[1]
        pos = torch.arange(n_hist, device=history_emb.device)
        if history_len is None:
            age = (n_hist - 1 - pos).unsqueeze(0)  # (1, L)
            hist_valid = torch.ones_like(history_emb[:, :, 0], dtype=torch.bool)  # (B, L)
        else:
            age = (history_len.unsqueeze(1) - 1 - pos).clamp(min=0)  # (B, L)
            hist_valid = pos.unsqueeze(0) < history_len.unsqueeze(1)  # (B, L)
        hist = self.in_proj(history_emb) + self.recency(age)  # (B, L, D)
        user = self.in_proj(user_emb) + self.feature_type  # (B, F_U, D)
        x = torch.cat([self.summary.expand(b, 1, self.d_model), user, hist], dim=1)  # (B, T, D), T = 1+F_U+L
        head_valid = torch.ones_like(x[:, : 1 + len(USER_FEATURES), 0], dtype=torch.bool)
        valid = torch.cat([head_valid, hist_valid], dim=1).unsqueeze(1)  # (B, 1, T)
        for block in self.blocks:
            x = block(x, valid)
        x = self.ln(x)
        return x[:, 0], x[:, 1 + len(USER_FEATURES) :]  # (B, D), (B, L, D)


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """ReLU MLP over ``sizes`` ending in one logit: sizes[0] -> ... -> 1."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], 1))


class ScorerLight(nn.Module):
    """relu(W_u user_state[candidate_user] + W_c candidate) -> MLP -> logit."""

    def __init__(self, cfg: LightConfig, d_model: int, emb_dim: int) -> None:
        super().__init__()
        h0 = cfg.hidden[0]
        self.user_proj = nn.Linear(d_model, h0)  # once per user
        self.cand_proj = nn.Linear(C_TOKENS * emb_dim, h0, bias=False)
        self.head = mlp(cfg.hidden)

    def forward(
        self,
        user_state: torch.Tensor,  # (B, D)
        candidate_emb: torch.Tensor,  # (N, C, E)
        candidate_user: torch.Tensor,  # (N,) int64 in [0, B)
    ) -> torch.Tensor:
        user = self.user_proj(user_state)  # (B, H0): projected once per user
        cand = self.cand_proj(candidate_emb.flatten(1))  # (N, H0)
        return self.head(torch.relu(user[candidate_user] + cand))[:, 0]  # (N,)


class ScorerHeavy(nn.Module):
    """Target attention of each candidate over its own user's history, then a deeper MLP.

    Candidates come in one block per user row, (B, n, C, E): each block attends to its user's
    keys and values only (projected once per user, B * L rows), so the attention costs B * n * L
    whatever B is; a block is padded when its user has fewer than n candidates.
    """

    def __init__(self, cfg: HeavyConfig, d_model: int, emb_dim: int) -> None:
        super().__init__()
        if d_model % cfg.n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by heavy n_heads {cfg.n_heads}")
        h0, cand_in = cfg.hidden[0], C_TOKENS * emb_dim
        self.n_heads, self.head_dim = cfg.n_heads, d_model // cfg.n_heads
        self.q = nn.Linear(cand_in, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)
        self.user_proj = nn.Linear(d_model, h0)
        self.cand_proj = nn.Linear(cand_in, h0, bias=False)
        self.attn_proj = nn.Linear(d_model, h0, bias=False)
        self.inter_proj = nn.Linear(d_model, h0, bias=False)
        self.max_proj = nn.Linear(cfg.n_heads, h0, bias=False)
        self.head = mlp(cfg.hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], self.n_heads, self.head_dim)  # (..., H, dh)

    def _target_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q (G, n, D), k and v (G, T, D), valid (G, n|1, T) -> attended (G, n, D) and the
        best match per head (G, n, H): max-pooled logits, the "closest history item" signal
        that a softmax average blurs."""
        logits = attention_logits(self._split(q), self._split(k), valid, self.head_dim)  # (G, H, n, T)
        return attend(logits, self._split(v)), logits.amax(dim=-1).transpose(1, 2)

    def _head(
        self, user: torch.Tensor, cand: torch.Tensor, q: torch.Tensor, att: torch.Tensor, best: torch.Tensor
    ) -> torch.Tensor:
        # user (N, H0) gathered; cand (N, C*E); q, att (N, D); best (N, H)
        h = user + self.cand_proj(cand) + self.attn_proj(att) + self.inter_proj(q * att) + self.max_proj(best)
        return self.head(torch.relu(h))[:, 0]  # (N,)

    def forward(
        self,
        user_state: torch.Tensor,  # (B, D)
        history_kv: torch.Tensor,  # (B, L, D)
        history_len: torch.Tensor | None,  # (B,); None: all L valid
        candidate_emb: torch.Tensor,  # (B, n, C, E): n candidates per user
    ) -> torch.Tensor:
        """Logits (B, n) of each user's block of candidates."""
        b, n = candidate_emb.shape[:2]
        cand = candidate_emb.flatten(2)  # (B, n, C*E)
        q = self.q(cand)  # (B, n, D)
        k, v = self.kv(history_kv).chunk(2, dim=-1)  # (B, L, D)
        if history_len is None:
            valid = torch.ones_like(history_kv[:, :, 0], dtype=torch.bool).unsqueeze(1)  # (B, 1, L)
        else:
            pos = torch.arange(history_kv.shape[1], device=history_kv.device)
            valid = (pos.unsqueeze(0) < history_len.unsqueeze(1)).unsqueeze(1)  # (B, 1, L)
        att, best = self._target_attention(q, k, v, valid)  # (B, n, D), (B, n, H)
        user = self.user_proj(user_state).unsqueeze(1).expand(b, n, -1)  # (B, n, H0) view, no copy
        return self._head(user.reshape(b * n, -1), cand.reshape(b * n, -1), q.reshape(b * n, -1),
                          att.reshape(b * n, -1), best.reshape(b * n, -1)).reshape(b, n)


class RankingModel(nn.Module):
    """Every trained part; the served graphs in export/serving.py are views of it."""

    def __init__(
        self,
        emb_cfg: EmbeddingConfig,
        tower_cfg: UserTowerConfig,
        light_cfg: LightConfig,
        heavy_cfg: HeavyConfig,
        cardinalities: dict[str, int],
    ) -> None:
        super().__init__()
        self.embedding = EmbeddingLookup(emb_cfg, cardinalities)
        self.tower = UserTower(tower_cfg, emb_cfg.dim)
        self.light = ScorerLight(light_cfg, tower_cfg.d_model, emb_cfg.dim)
        self.heavy = ScorerHeavy(heavy_cfg, tower_cfg.d_model, emb_cfg.dim)

    def forward(
        self,
        user_features: torch.Tensor,  # (B, F_U)
        history_ids: torch.Tensor,  # (B, L)
        history_len: torch.Tensor,  # (B,)
        candidate_ids: torch.Tensor,  # (B, n)
        candidate_features: torch.Tensor,  # (B, n, F_C)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training / evaluation layout -> (light logits, heavy logits), each (B, n)."""
        user_emb, history_emb, candidate_emb = self.embedding(
            user_features, history_ids, candidate_ids, candidate_features
        )
        user_state, history_kv = self.tower(user_emb, history_emb, history_len)  # (B, D), (B, L, D)
        b, n = candidate_ids.shape
        cand_user = torch.arange(b, device=candidate_ids.device).repeat_interleave(n)  # (B*n,)
        light = self.light(user_state, candidate_emb.flatten(0, 1), cand_user).reshape(b, n)
        heavy = self.heavy(user_state, history_kv, history_len, candidate_emb)
        return light, heavy
