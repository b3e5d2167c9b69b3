"""serving/arrays.py on both libraries, and the request path (serving/ranker.rank) on each.

The NumPy implementations are the reference (tests/test_request.py pins them); every
torch result here must equal the NumPy result bit for bit, on CPU tensors (no GPU on
these machines: the device handling is exercised only as far as "cpu" goes).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest
import torch

from export.samples import random_inputs
from serving import arrays as tensors
from serving.batcher import CallPlan
from serving.composition import SharedState
from serving.contract import MODELS, RANKER, SCORER_HEAVY, ModelSignature, RequestError
from serving.contract import validate_inputs as validate_numpy_inputs
from serving.ranker import RankerState, RequestTime, ScorerError, rank
from serving.routing import CostModel, RoutePolicy, TierCost
from tests.test_request import _random_scores
from tests.test_triton_models import Tensor


def as_torch(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def assert_same(got: torch.Tensor, want: np.ndarray) -> None:
    """Same dtype, shape and bits (NaN where NaN)."""
    assert isinstance(got, torch.Tensor)
    host = got.numpy()
    assert host.dtype == want.dtype or (host.dtype == np.int64 and want.dtype == np.intp)
    np.testing.assert_array_equal(host, want)
    assert host.tobytes() == want.astype(host.dtype).tobytes()


# --- library choice and the Triton boundary -----------------------------------------------------------


def test_numpy_path_never_imports_torch():
    """The CPU profile's stub runs the request path without torch (its import costs ~1 s and memory)."""
    code = (
        "import sys\n"
        "from serving import arrays as tensors, composition, ranker, request, routing\n"
        "assert tensors.load_library('numpy') == 'numpy'\n"
        "assert not tensors.is_torch(tensors.top_k_indices(__import__('numpy').zeros(3), 2))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "tensors.load_library('torch')\n"
        "assert 'torch' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_library_rejects_unknown():
    with pytest.raises(ValueError, match=r"tensor_library must be one of numpy, torch, got 'cupy'"):
        tensors.load_library("cupy")


def test_is_torch_placement_to_numpy():
    a = np.arange(3, dtype=np.float32)
    t = torch.from_numpy(a)
    assert tensors.is_torch(t) and not tensors.is_torch(a) and not tensors.is_torch([1.0])
    assert tensors.placement(t) == tensors.placement(a) == ("cpu", 0)
    assert tensors.to_numpy(a) is a
    np.testing.assert_array_equal(tensors.to_numpy(t * 2), a * 2)


def test_triton_round_trip_is_zero_copy():
    """from_triton(torch) shares the Triton tensor's memory; to_triton passes tensors by DLPack."""
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    t = tensors.from_triton(Tensor("x", array), "torch")
    assert isinstance(t, torch.Tensor) and t.data_ptr() == array.ctypes.data
    assert tensors.from_triton(Tensor("x", array), "numpy") is array
    back = tensors.to_triton(Tensor, "y", t)
    assert back.via_dlpack and back.as_numpy().ctypes.data == array.ctypes.data
    # A strided view is made contiguous (Triton's from_dlpack rejects it otherwise).
    column = tensors.to_triton(Tensor, "c", t[:, 1])
    np.testing.assert_array_equal(column.as_numpy(), array[:, 1])
    plain = tensors.to_triton(Tensor, "n", array)
    assert not plain.via_dlpack and plain.as_numpy() is array


# --- elementwise and layout -----------------------------------------------------------------------------


def test_layout_ops_match_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.random(n, dtype=np.float32) for n in (3, 1, 5)]
    assert_same(tensors.concatenate([torch.from_numpy(p) for p in parts]), np.concatenate(parts))
    doubles = rng.random(4)
    assert_same(tensors.float32(torch.from_numpy(doubles)), doubles.astype(np.float32))
    emb = rng.random((6, 4, 3), dtype=np.float32)
    assert_same(tensors.int64_zeros(6, like=torch.from_numpy(emb)), tensors.int64_zeros(6, like=emb))
    assert_same(tensors.int64_vector([7], like=torch.from_numpy(emb)), tensors.int64_vector([7], like=emb))
    idx = np.array([5, 0, 3])
    assert_same(tensors.take(torch.from_numpy(emb), torch.from_numpy(idx)), tensors.take(emb, idx))


# --- top-k ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["continuous", "few-levels", "with-nan", "mostly-nan", "signed-zero"])
@pytest.mark.parametrize("n, k", [(10, 3), (200, 10), (1000, 37), (4096, 128), (300, 299), (5, 0), (5, 9)])
def test_top_k_indices_torch_equals_numpy(kind: str, n: int, k: int):
    rng = np.random.default_rng(n * 1000 + k)
    for _ in range(5):
        scores = _random_scores(rng, kind, n)
        got = tensors.top_k_indices(torch.from_numpy(scores), k)
        assert got.dtype == torch.int64
        np.testing.assert_array_equal(got.numpy(), tensors.top_k_indices(scores, k))


def test_top_k_indices_torch_rejects():
    with pytest.raises(ValueError, match="1-D"):
        tensors.top_k_indices(torch.zeros(2, 2), 1)
    with pytest.raises(ValueError, match="k must be >= 0"):
        tensors.top_k_indices(torch.zeros(3), -1)


# --- cascade merge --------------------------------------------------------------------------------------


def _merge_both(light: np.ndarray, heavy_top: np.ndarray, top_idx: np.ndarray) -> None:
    want = tensors.cascade_merge(light, heavy_top, top_idx)
    got = tensors.cascade_merge(*(torch.from_numpy(a) for a in (light, heavy_top, top_idx)))
    assert_same(got, want)


@pytest.mark.parametrize(
    "light, heavy_top, top_idx",
    [
        ([0.9, 0.1, 0.8, 0.2], [0.7, 0.6], [0, 2]),  # rest below floor: kept
        ([0.9, 0.5, 0.8, 0.25], [0.4, 0.3], [0, 2]),  # one halving
        ([0.9, 0.5, 0.8, 0.5], [0.5, 0.75], [0, 2]),  # tie at the floor
        ([0.3, 0.6], [], []),  # nothing re-scored
        ([0.3, 0.6], [0.125, 0.5], [1, 0]),  # everything re-scored
        ([0.9, 0.5, 0.25], [0.0], [0]),  # zero floor: the shift fallback
        ([0.9, -0.5, 0.25], [0.5], [0]),  # negative light: the shift fallback
        ([1.0, 0.75, 3e-38], [1e-40], [0]),  # e ~ 133: subnormal results, rounded once
        ([1.0, 0.7, 0.3], [1e-45], [0]),  # floor the smallest subnormal: rest flushed to 0
        ([1.0, 3e38, 1e38], [1e-45], [0]),  # e = 276: 2**-e itself is below float32's range
    ],
    ids=[
        "rest-below-kept",
        "power-of-two",
        "tie-at-floor",
        "m-zero",
        "m-equals-n",
        "zero-floor",
        "negative-light",
        "subnormal",
        "smallest-floor",
        "huge-exponent",
    ],
)
def test_cascade_merge_torch_equals_numpy_cases(light, heavy_top, top_idx):
    _merge_both(np.array(light, np.float32), np.array(heavy_top, np.float32), np.array(top_idx, np.int64))


@pytest.mark.parametrize("n, m", [(50, 5), (1000, 128), (300, 299)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cascade_merge_torch_equals_numpy_random(n: int, m: int, dtype: type):
    rng = np.random.default_rng(n + m)
    for scale in (1.0, 0.2, 1e-3, 1e-30):  # heavy at, or far below, light's scale
        light = rng.random(n).astype(dtype)
        top_idx = tensors.top_k_indices(light, m)
        _merge_both(light, (rng.random(m) * scale).astype(np.float32), top_idx)


@pytest.mark.parametrize(
    "light, heavy_top, top_idx, match",
    [
        ([0.1, 0.2], [0.5], [0, 1], "need light"),
        ([0.1, 0.2], [0.5], [2], r"must lie in 0\.\.1, got 2\.\.2"),
        ([0.1, 0.2, 0.3], [0.5, 0.6], [1, 1], "must not repeat"),
    ],
)
def test_cascade_merge_torch_rejects_as_numpy(light, heavy_top, top_idx, match):
    for lib in (np.asarray, torch.tensor):
        with pytest.raises(ValueError, match=match):
            tensors.cascade_merge(lib(np.array(light, np.float32)), lib(np.array(heavy_top, np.float32)), lib(top_idx))


# --- validation -----------------------------------------------------------------------------------------

SIZES = {"L": 5, "N": 7, "B": 2, "K": 3, "E": 4, "D": 6}


def _message(sig: ModelSignature, arrays: dict) -> str | None:
    """The RequestError message of ``arrays``, None if they pass."""
    try:
        tensors.validate_inputs(sig, arrays)
    except RequestError as e:
        return str(e)
    return None


def _mutations(sig_name: str) -> list[tuple[str, object]]:
    """(input, mutation) pairs that break one input of ``sig_name`` (each must fail on both libraries)."""
    out: list[tuple[str, object]] = []
    for spec in MODELS[sig_name].inputs:
        if spec.optional:
            continue
        if spec.dtype == "FP32":
            out.append((spec.name, lambda a: a.reshape(-1).__setitem__(0, np.nan)))
            out.append((spec.name, lambda a: a.reshape(-1).__setitem__(-1, -np.inf)))
        if spec.values is not None:
            out.append((spec.name, lambda a: a.reshape(-1).__setitem__(0, -1)))
        if spec.values and spec.values.startswith(("index:", "length:")):
            out.append((spec.name, lambda a: a.reshape(-1).__setitem__(-1, 10**6)))
        if spec.values and spec.values.startswith("length:"):
            out.append((spec.name, lambda a: a.reshape(-1).__setitem__(0, 0)))
    return out


@pytest.mark.parametrize("name", sorted(MODELS), ids=str)
def test_validate_inputs_torch_gives_numpy_messages(name: str):
    """Every value check fails the same way, with the same message, on tensors as on arrays."""
    sig = MODELS[name]
    base = random_inputs(sig, {**SIZES, "B": 1} if sig.batched else SIZES, np.random.default_rng(0))  # one user
    assert tensors.validate_inputs(sig, as_torch(base)) == validate_numpy_inputs(sig, base)
    mutations = _mutations(name)
    assert mutations, f"{name} has no value-checked input"
    for input_name, mutate in mutations:
        bad = {k: v.copy() for k, v in base.items()}
        mutate(bad[input_name])
        want = _message(sig, bad)
        assert want is not None and f"'{input_name}'" in want, (input_name, want)
        assert _message(sig, as_torch(bad)) == want


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a.update(candidate_ids=a["candidate_ids"][:, :-1]), "'candidate_ids' has N=6"),
        (lambda a: a.update(candidate_emb=a["candidate_emb"].astype(np.float64)), "'candidate_emb' must be FP32"),
        (lambda a: a.pop("history_kv"), "missing required input 'history_kv'"),
        (lambda a: a.update(user_state=a["user_state"][None]), "'user_state' must have 2 dims"),
        (lambda a: a.update(candidate_emb=a["candidate_emb"][:, :, :3]), "'candidate_emb' dim 2 must be 4"),
        (lambda a: a.update(user_state=np.concatenate([a["user_state"]] * 2)), "'user_state' must hold one user"),
    ],
    ids=["n-mismatch", "dtype", "missing", "rank", "fixed-dim", "two-users"],
)
def test_validate_inputs_torch_shapes_and_dtypes(mutate, match: str):
    arrays = random_inputs(RANKER, {**SIZES, "N": 7, "B": 1}, np.random.default_rng(1))
    mutate(arrays)
    for given in (arrays, as_torch(arrays)):
        with pytest.raises(RequestError, match=match):
            tensors.validate_inputs(RANKER, given)


def test_validate_inputs_mixed_libraries():
    """A request may mix host and device tensors (top_k stays small); the check covers both."""
    arrays = random_inputs(SCORER_HEAVY, SIZES, np.random.default_rng(2))
    mixed = {**as_torch(arrays), "history_len": arrays["history_len"]}
    assert tensors.validate_inputs(SCORER_HEAVY, mixed) == validate_numpy_inputs(SCORER_HEAVY, arrays)
    mixed["history_len"] = np.full_like(arrays["history_len"], SIZES["L"] + 1)
    with pytest.raises(RequestError, match="'history_len' values must lie in 1..5"):
        tensors.validate_inputs(SCORER_HEAVY, mixed)


# --- ranker.rank on both libraries ---------------------------------------------------------------------

N, K, D, C, E = 300, 5, 4, 4, 3
PRIORS = {"light": TierCost(1.0, 0.001), "heavy": TierCost(2.0, 0.01)}


def scorer(heavy_fails: bool = False):
    """A ScoreFn computed in NumPy (the same numbers for both libraries), returned in the caller's
    library; it records the types and dtypes it was given."""
    seen: list[tuple[str, str, str]] = []

    async def score_fn(tier: str, inputs: dict) -> object:
        for name, value in inputs.items():
            seen.append((tier, name, f"{type(value).__module__}:{value.dtype}"))
        host = {k: tensors.to_numpy(v) for k, v in inputs.items()}
        # light: candidates (n, C, E) of user rows candidate_user; heavy: one block (1, n, C, E) of user 0
        cand = host["candidate_emb"] if tier == "light" else host["candidate_emb"][0]
        emb = cand.reshape(cand.shape[0], -1)  # (n, C * E)
        if tier == "light":
            assert not host["candidate_user"].any()
        assert host["user_state"].shape[0] == 1  # the one user row, never tiled
        logits = emb[:, :D] @ np.ones(D, np.float32) * 0.3 + host["user_state"][0].sum() * 0.1
        if tier == "heavy":
            if heavy_fails:
                raise ScorerError("scorer_heavy: injected")
            logits = logits - emb[:, D:].mean(axis=1) + host["history_kv"][0, : int(host["history_len"][0])].mean()
        scores = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)  # (n,)
        scores = scores if tier == "light" else scores[None]  # heavy answers (B, n)
        return torch.from_numpy(scores) if tensors.is_torch(inputs["candidate_emb"]) else scores

    score_fn.seen = seen
    return score_fn


def _rank(library: str, route: str, budget_ms: float, threshold: float, heavy_fails: bool = False):
    rng = np.random.default_rng(5)
    user_state, history_kv = rng.random((1, D), dtype=np.float32), rng.random((6, D), dtype=np.float32)
    emb = rng.random((N, C, E), dtype=np.float32)
    emb[::7] = emb[0]  # ties in the scores, across micro-batches
    if library == "torch":
        user_state, history_kv, emb = (torch.from_numpy(a) for a in (user_state, history_kv, emb))
    calls = CallPlan(micro_batch=128, split_min=128)
    state = RankerState(RoutePolicy(cascade_m=16, confidence_threshold=threshold), CostModel(PRIORS), calls)
    score_fn = scorer(heavy_fails)
    shared = SharedState(user_state, history_kv[None])
    result = asyncio.run(rank(score_fn, state, shared, emb, route, K, RequestTime.now(budget_ms, heavy_ms=1e4)))
    return result, score_fn.seen


@pytest.mark.parametrize(
    "route, budget_ms, threshold, heavy_fails, taken",
    [
        ("light", 100.0, 0.9, False, "light"),
        ("heavy", 100.0, 0.9, False, "heavy"),
        ("cascade", 100.0, 0.9, False, "cascade"),
        ("auto", 1e6, 0.9, False, "heavy"),
        ("auto", 4.5, 1.0, False, "cascade"),  # heavy(300) = 5 ms does not fit, light + heavy(16) does
        ("auto", 4.5, 0.0, False, "light"),  # the same plan, settled at light: always confident
        ("auto", 1e-3, 0.9, False, "light"),
        ("cascade", 100.0, 0.9, True, "light"),  # heavy fails: the light ranking
    ],
    ids=["light", "heavy", "cascade", "auto-heavy", "auto-cascade", "auto-settled", "auto-light", "fallback"],
)
def test_rank_torch_equals_numpy(route: str, budget_ms: float, threshold: float, heavy_fails: bool, taken: str):
    want, seen_numpy = _rank("numpy", route, budget_ms, threshold, heavy_fails)
    got, seen_torch = _rank("torch", route, budget_ms, threshold, heavy_fails)
    assert want.route == got.route == taken
    assert want.candidates_scored == got.candidates_scored
    assert want.fallback == got.fallback
    assert_same(got.scores, want.scores)
    assert_same(got.top_idx, want.top_idx)
    # Each path gave its scorers its own library only, with the contract's dtypes.
    assert {s.split(":")[0] for _, _, s in seen_numpy} == {"numpy"}
    assert {s.split(":")[0] for _, _, s in seen_torch} == {"torch"}
    assert [(t, n) for t, n, _ in seen_numpy] == [(t, n) for t, n, _ in seen_torch]
    dtypes = {n: s.split(":")[1] for _, n, s in seen_torch}
    assert dtypes.get("candidate_user", "torch.int64") == "torch.int64" and dtypes["candidate_emb"] == "torch.float32"
