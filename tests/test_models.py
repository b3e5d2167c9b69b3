"""The ranking network's invariants: broadcast = tiling, serving = training layout, hashing, pruning.

Numerics compare an optimized path against its plain reference in FP32 with stated
tolerances (only summation order differs, so ~1e-5); no golden numbers.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from export.config import PRESETS, EmbeddingConfig, cardinalities
from export.models import HASH_PRIME, EmbeddingLookup, RankingModel, UserTower, hash_plan
from export.onnx_export import export_model
from export.samples import random_inputs
from export.serving import (
    EmbeddingLookupServing,
    PerCandidateBaselineServing,
    ScorerHeavyServing,
    UserTowerServing,
)
from export.train import build_model
from serving.contract import C_TOKENS, EMBEDDED_FEATURES, EMBEDDING_LOOKUP, F_U, L_MAX, USER_FEATURES

# FP32, same math in a different summation order / matmul shape.
TOL = {"rtol": 1e-5, "atol": 1e-5}


@pytest.fixture(scope="module")
def model() -> RankingModel:
    return build_model(PRESETS["tiny"]).eval()


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _user_side(model: RankingModel, b: int, n_hist: int, gen: torch.Generator):
    d = model.tower.d_model
    user_state = torch.randn(b, d, generator=gen)  # (B, D)
    history_kv = torch.randn(b, n_hist, d, generator=gen)  # (B, L, D)
    history_len = torch.randint(1, n_hist + 1, (b,), generator=gen)  # (B,)
    history_len[0] = n_hist  # one user with a full history
    return user_state, history_kv, history_len


def _candidates(model: RankingModel, n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, C_TOKENS, model.embedding.dim, generator=gen)  # (N, C, E)


# --- (a) in-engine broadcast == explicit tiling -------------------------------------------------


@pytest.mark.parametrize("b", [1, 3], ids=["B1", "B3"])
def test_light_broadcast_equals_tiling(model: RankingModel, b: int):
    gen = torch.Generator().manual_seed(b)
    user_state, _, _ = _user_side(model, b, 5, gen)
    cand = _candidates(model, 17, gen)
    cand_user = torch.randint(0, b, (17,), generator=gen)  # (N,) unsorted
    got = model.light(user_state, cand, cand_user)
    tiled = model.light(user_state[cand_user], cand, torch.arange(17))  # one user row per candidate
    torch.testing.assert_close(got, tiled, **TOL)


def _blocks(model: RankingModel, counts: list[int], gen: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each user's candidates (n_b, C, E), and the padded blocks (B, max n_b, C, E) the ranker sends."""
    per_user = [_candidates(model, n, gen) for n in counts]
    blocks = torch.zeros(len(counts), max(counts), C_TOKENS, model.embedding.dim)
    for i, cand in enumerate(per_user):
        blocks[i, : cand.shape[0]] = cand
    return blocks, per_user


HEAVY_BATCHES = [1, 2, 8, 64]


@pytest.mark.parametrize("b", HEAVY_BATCHES, ids=[f"B{b}" for b in HEAVY_BATCHES])
def test_heavy_blocks_equal_tiling(model: RankingModel, b: int):
    """Each candidate with its own copy of its user's state and history (the naive layout) scores
    what its padded block scores: padding, and the other users, leak into nothing."""
    gen = torch.Generator().manual_seed(10 + b)
    user_state, history_kv, history_len = _user_side(model, b, 6, gen)  # unequal L (history_len)
    counts = torch.randint(1, 12, (b,), generator=gen).tolist()  # unequal N
    blocks, per_user = _blocks(model, counts, gen)
    got = model.heavy(user_state, history_kv, history_len, blocks)  # (B, n_max)
    for u, cand in enumerate(per_user):
        n = cand.shape[0]
        tiled = model.heavy(
            user_state[u].expand(n, -1), history_kv[u].expand(n, -1, -1), history_len[u].expand(n), cand.unsqueeze(1)
        )  # (n, 1): one user row per candidate
        torch.testing.assert_close(got[u, :n], tiled[:, 0], **TOL)


@pytest.mark.parametrize("b", HEAVY_BATCHES, ids=[f"B{b}" for b in HEAVY_BATCHES])
def test_heavy_blocks_equal_one_user_at_a_time(model: RankingModel, b: int):
    """The B-user call equals B calls of one user each, on that user's own (unpadded) history."""
    gen = torch.Generator().manual_seed(20 + b)
    user_state, history_kv, history_len = _user_side(model, b, 9, gen)
    counts = torch.randint(1, 20, (b,), generator=gen).tolist()
    blocks, per_user = _blocks(model, counts, gen)
    got = model.heavy(user_state, history_kv, history_len, blocks)
    for u, cand in enumerate(per_user):
        length = int(history_len[u])
        alone = model.heavy(user_state[u : u + 1], history_kv[u : u + 1, :length], history_len[u : u + 1], cand[None])
        torch.testing.assert_close(got[u, : cand.shape[0]], alone[0], **TOL)


def test_heavy_none_len_equals_full_len(model: RankingModel):
    gen = torch.Generator().manual_seed(30)
    user_state, history_kv, _ = _user_side(model, 2, 4, gen)
    cand = _candidates(model, 6, gen).reshape(2, 3, C_TOKENS, -1)
    full = torch.full((2,), 4, dtype=torch.int64)
    torch.testing.assert_close(
        model.heavy(user_state, history_kv, None, cand), model.heavy(user_state, history_kv, full, cand), **TOL
    )


# --- (c) per-candidate baseline == the served heavy path ------------------------------------------


@pytest.mark.parametrize("n_hist, n", [(1, 1), (6, 9)], ids=["L1-N1", "L6-N9"])
def test_baseline_equals_heavy_path(model: RankingModel, n_hist: int, n: int):
    sizes = {"L": n_hist, "N": n, "B": 1}
    x = {k: torch.from_numpy(v) for k, v in random_inputs(EMBEDDING_LOOKUP, sizes, np.random.default_rng(n)).items()}
    user_emb, history_emb, cand_emb, history_len = EmbeddingLookupServing(model)(**x)
    user_state, history_kv = UserTowerServing(model)(user_emb, history_emb, history_len)  # (1, D), (1, L, D)
    heavy = ScorerHeavyServing(model)(user_state, history_kv, history_len[:, 0], cand_emb)[0]  # one block
    baseline = PerCandidateBaselineServing(model)(
        x["user_features"].expand(n, F_U),  # tiled (N, F_U)
        x["history_ids"].expand(n, n_hist),  # tiled (N, L)
        x["candidate_ids"][0],
        x["candidate_features"][0],
    )
    torch.testing.assert_close(baseline, heavy, **TOL)


# --- (d) hashing ------------------------------------------------------------------------------------


TINY_CARD = cardinalities(PRESETS["tiny"].world)
TINY_EMB = PRESETS["tiny"].embedding
EDGE_IDS = [0, 1, HASH_PRIME - 1, HASH_PRIME, HASH_PRIME + 1, 2**32, 2**62, 2**63 - 2, 2**63 - 1]


def _exact_rows(plan: dict[str, np.ndarray], feature: str, values: list[int]) -> list[int]:
    """The hash in Python integers (arbitrary precision: nothing can overflow)."""
    f = EMBEDDED_FEATURES.index(feature)
    m, a, b, o = (int(plan[k][f]) for k in ("mult", "add", "buckets", "offset"))
    return [((v % HASH_PRIME) * m + a) % HASH_PRIME % b + o for v in values]


@pytest.fixture(scope="module")
def lookup() -> EmbeddingLookup:
    torch.manual_seed(0)
    return EmbeddingLookup(TINY_EMB, TINY_CARD)


def test_hash_plan_is_deterministic():
    a, b = hash_plan(TINY_CARD, TINY_EMB), hash_plan(TINY_CARD, TINY_EMB)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    torch.manual_seed(1)
    other = EmbeddingLookup(TINY_EMB, TINY_CARD)  # different table, same hashing
    ids = torch.tensor([[3, 2**63 - 1, 77, 12]])
    assert torch.equal(EmbeddingLookup(TINY_EMB, TINY_CARD).rows(ids, USER_FEATURES), other.rows(ids, USER_FEATURES))


@pytest.mark.parametrize("feature", EMBEDDED_FEATURES, ids=str)
def test_rows_in_feature_range_and_exact(lookup: EmbeddingLookup, feature: str):
    plan = {k: getattr(lookup, f"hash_{k}").numpy() for k in ("buckets", "mult", "add", "offset")}
    rng = np.random.default_rng(0)
    values = EDGE_IDS + rng.integers(0, 2**63 - 1, 200, dtype=np.int64).tolist() + list(range(50))
    rows = lookup.rows(torch.tensor(values, dtype=torch.int64).unsqueeze(-1), (feature,))[:, 0]
    f = EMBEDDED_FEATURES.index(feature)
    lo, hi = int(plan["offset"][f]), int(plan["offset"][f] + plan["buckets"][f])
    assert int(rows.min()) >= lo and int(rows.max()) < hi, f"{feature} rows outside [{lo}, {hi})"
    assert rows.tolist() == _exact_rows(plan, feature, values), "int64 hash differs from exact arithmetic"


def test_offsets_tile_the_table(lookup: EmbeddingLookup):
    buckets, offset = lookup.hash_buckets.numpy(), lookup.hash_offset.numpy()
    assert offset[0] == 0 and np.array_equal(offset[1:], np.cumsum(buckets)[:-1])
    assert lookup.total_rows == int(buckets.sum()) == lookup.table.shape[0]


def test_direct_features_are_collision_free(lookup: EmbeddingLookup):
    direct = [f for i, f in enumerate(EMBEDDED_FEATURES) if lookup.hash_mult[i] == 1 and lookup.hash_add[i] == 0]
    assert {"age_bucket", "region", "device", "category", "price_bucket"} <= set(direct)
    for feature in direct:
        card = TINY_CARD[feature]
        rows = lookup.rows(torch.arange(card).unsqueeze(-1), (feature,))[:, 0]
        assert len(set(rows.tolist())) == card, f"{feature}: in-vocabulary values collide"


@pytest.mark.parametrize(
    "card, cfg, direct",
    [
        ({f: 10 for f in EMBEDDED_FEATURES}, EmbeddingConfig(row_budget=1_000, min_buckets=4), set(EMBEDDED_FEATURES)),
        (
            {**{f: 10 for f in EMBEDDED_FEATURES}, "user_id": 10**6, "item_id": 3 * 10**6},
            EmbeddingConfig(row_budget=10_000, min_buckets=16),
            set(EMBEDDED_FEATURES) - {"user_id", "item_id"},
        ),
        (
            {f: 10**6 for f in EMBEDDED_FEATURES},
            EmbeddingConfig(row_budget=100, min_buckets=64),
            set(),
        ),
    ],
    ids=["all-fit", "two-hashed", "budget-below-min-buckets"],
)
def test_hash_plan_budget(card: dict[str, int], cfg: EmbeddingConfig, direct: set[str]):
    plan = hash_plan(card, cfg)
    is_direct = {f for i, f in enumerate(EMBEDDED_FEATURES) if plan["mult"][i] == 1 and plan["add"][i] == 0}
    assert is_direct == direct
    hashed = [i for i, f in enumerate(EMBEDDED_FEATURES) if f not in direct]
    for i, f in enumerate(EMBEDDED_FEATURES):
        if f in direct:
            assert plan["buckets"][i] == card[f]
        else:
            assert plan["buckets"][i] >= cfg.min_buckets
            assert 1 <= plan["mult"][i] < HASH_PRIME and 0 <= plan["add"][i] < HASH_PRIME
    # The budget holds up to rounding, unless min_buckets forces more rows.
    assert plan["buckets"].sum() <= max(cfg.row_budget, 0) + len(hashed) * cfg.min_buckets
    if not hashed or cfg.row_budget >= len(hashed) * cfg.min_buckets * 2:
        assert plan["buckets"].sum() <= cfg.row_budget


def test_hash_plan_rejects_empty_feature():
    with pytest.raises(ValueError, match="cardinalities must be >= 1"):
        hash_plan({**TINY_CARD, "region": 0}, TINY_EMB)


# --- (e) pruning ------------------------------------------------------------------------------------


def test_prune_falls_back_and_keeps_rows():
    torch.manual_seed(0)
    emb = EmbeddingLookup(TINY_EMB, TINY_CARD)
    before = emb.table.detach().clone()  # (R, E)
    keep = torch.rand(emb.total_rows, generator=torch.Generator().manual_seed(0)) < 0.5
    stats = emb.prune(keep)
    assert emb.table.shape == (int(keep.sum()) + 1, emb.dim)
    assert torch.all(emb.remap[~keep] == 0), "pruned rows must map to the fallback row 0"
    assert torch.all(emb.remap[keep] > 0)
    served = emb.table[emb.remap.long()]  # (R, E): the embedding each hashed row now serves
    torch.testing.assert_close(served[keep], before[keep], rtol=0, atol=0)
    torch.testing.assert_close(emb.table[0], before[~keep].mean(0))
    # Through the public path: a direct feature's values hit exactly their rows.
    values = torch.arange(TINY_CARD["region"]).unsqueeze(-1)
    rows = emb.rows(values, ("region",))[:, 0]
    torch.testing.assert_close(emb.embed(values, ("region",))[:, 0], served[rows], rtol=0, atol=0)
    # Memory: float32 table + int32 remap, before vs after.
    r, e = emb.total_rows, emb.dim
    assert stats["rows_kept"] == keep.sum().item() and stats["rows_total"] == r
    assert stats["table_bytes_before"] == r * e * 4
    assert stats["table_bytes_after"] == (keep.sum().item() + 1) * e * 4 + r * 4
    assert stats["memory_saved_fraction"] == pytest.approx(1 - stats["table_bytes_after"] / stats["table_bytes_before"])
    assert stats["memory_saved_fraction"] > 0.3


def test_prune_twice_composes():
    torch.manual_seed(0)
    emb = EmbeddingLookup(TINY_EMB, TINY_CARD)
    before = emb.table.detach().clone()
    gen = torch.Generator().manual_seed(1)
    keep1 = torch.rand(emb.total_rows, generator=gen) < 0.7
    keep2 = keep1 & (torch.rand(emb.total_rows, generator=gen) < 0.7)  # a subset of keep1
    emb.prune(keep1)
    emb.prune(keep2)
    served = emb.table[emb.remap.long()]
    torch.testing.assert_close(served[keep2], before[keep2], rtol=0, atol=0)
    assert torch.all(emb.remap[~keep2] == 0)


def test_prune_nothing_is_identity():
    torch.manual_seed(0)
    emb = EmbeddingLookup(TINY_EMB, TINY_CARD)
    before = emb.table.detach().clone()
    stats = emb.prune(torch.ones(emb.total_rows, dtype=torch.bool))
    torch.testing.assert_close(emb.table[emb.remap.long()], before, rtol=0, atol=0)
    assert stats["memory_saved_fraction"] < 0  # the remap and fallback row cost a little


# --- (f) user tower padding -------------------------------------------------------------------------


def test_user_tower_padding_equals_unpadded(model: RankingModel):
    gen = torch.Generator().manual_seed(5)
    lengths = [1, 4, 7]
    e, n_hist = model.embedding.dim, max(lengths)
    user_emb = torch.randn(len(lengths), F_U, e, generator=gen)  # (B, F_U, E)
    history_emb = torch.randn(len(lengths), n_hist, e, generator=gen) * 3  # (B, L, E); padding is garbage
    state, kv = model.tower(user_emb, history_emb, torch.tensor(lengths))  # (B, D), (B, L, D)
    for i, n in enumerate(lengths):
        ref_state, ref_kv = model.tower(user_emb[i : i + 1], history_emb[i : i + 1, :n])  # unpadded, 1 row
        torch.testing.assert_close(state[i], ref_state[0], **TOL)
        torch.testing.assert_close(kv[i, :n], ref_kv[0], **TOL)


# --- (g) the large preset ---------------------------------------------------------------------------


def _tower_matmul_flops(preset_name: str, n_hist: int) -> int:
    """Analytic FLOPs (2 per multiply-add) of the user tower's matmuls for one request."""
    p = PRESETS[preset_name]
    d, e, t = p.tower.d_model, p.embedding.dim, 1 + F_U + n_hist
    in_proj = 2 * (F_U + n_hist) * e * d
    per_layer = 2 * t * d * (3 * d + d + 2 * p.tower.ff_mult * d) + 2 * 2 * t * t * d  # qkv, proj, ff; QK^T, AV
    return in_proj + p.tower.n_layers * per_layer


def test_large_user_tower_is_gflop_scale():
    p = PRESETS["large"]
    torch.manual_seed(0)
    tower = UserTower(p.tower, p.embedding.dim).eval()
    user_emb, history_emb = torch.randn(1, F_U, p.embedding.dim), torch.randn(1, L_MAX, p.embedding.dim)
    with FlopCounterMode(display=False) as counter:
        tower(user_emb, history_emb)
    counted, analytic = counter.get_total_flops(), _tower_matmul_flops("large", L_MAX)
    assert counted == pytest.approx(analytic, rel=0.02)
    assert counted >= 1e9, f"large user tower costs {counted / 1e9:.2f} GFLOP per request at L={L_MAX}"


def test_large_user_tower_exports(tmp_path):
    model = build_model(PRESETS["large"]).eval()
    path = export_model(model, "user_tower", tmp_path / "user_tower.onnx")
    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    e, d = model.embedding.dim, model.tower.d_model
    assert (e, d) == (PRESETS["large"].embedding.dim, PRESETS["large"].tower.d_model)
    rng = np.random.default_rng(0)
    feeds = {
        "user_emb": rng.standard_normal((1, F_U, e)).astype(np.float32),
        "history_emb": rng.standard_normal((1, 5, e)).astype(np.float32),
        "history_len": np.array([[5]], dtype=np.int64),
    }
    user_state, history_kv = session.run(["user_state", "history_kv"], feeds)
    ref_state, ref_kv = UserTowerServing(model)(
        *(torch.from_numpy(feeds[k]) for k in ("user_emb", "history_emb", "history_len"))
    )
    assert user_state.shape == (1, d) and history_kv.shape == (1, 5, d)
    np.testing.assert_allclose(user_state, ref_state.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(history_kv, ref_kv.numpy(), rtol=1e-4, atol=1e-4)
