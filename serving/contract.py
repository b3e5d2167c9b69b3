"""The tensor contract: names, dtypes, shapes and limits, defined once.

The ONNX export, the TensorRT profiles, the Triton configs (tests/test_configs.py), the
models' request validation and the client all read it. NumPy only (it runs in the stubs).

Symbols in shapes: L history length (1..L_MAX), N candidates (1..N_MAX), B users (requests)
in one call (1..B_MAX), K results (1..N); E embedding and D model width (set by the preset).
Integers are fixed sizes (F_U user features, F_C candidate features). A ``batched`` model's
leading "B" is Triton's batch dimension: its config omits it, and each request holds one user.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

USER_FEATURES: tuple[str, ...] = ("user_id", "age_bucket", "region", "device")
CANDIDATE_FEATURES: tuple[str, ...] = ("category", "creator_id", "price_bucket")
ITEM_FEATURE = "item_id"
# Every categorical feature of the unified embedding table, in table order.
EMBEDDED_FEATURES: tuple[str, ...] = USER_FEATURES + (ITEM_FEATURE,) + CANDIDATE_FEATURES

F_U = len(USER_FEATURES)
F_C = len(CANDIDATE_FEATURES)
C_TOKENS = F_C + 1  # candidate embedding tokens: item id then its features

L_MAX = 256
N_MAX = 4096
B_MAX = 64

# Inclusive limits per symbol; symbols without limits (E, D) only need to agree.
DIM_LIMITS: dict[str, tuple[int, int]] = {
    "L": (1, L_MAX),
    "N": (1, N_MAX),
    "B": (1, B_MAX),
    "K": (1, N_MAX),
}

# Triton dtype name -> NumPy dtype. The ONNX / config spellings derive from it.
NUMPY_DTYPES: dict[str, type] = {
    "INT64": np.int64,
    "INT32": np.int32,
    "FP32": np.float32,
    "BYTES": np.object_,
}
# Inputs of these dtypes must be finite: a NaN or Inf in an embedding or user state does not
# fail in the engines, it turns every score it touches into NaN and top-K over NaN is arbitrary.
FLOAT_DTYPES: frozenset[str] = frozenset(d for d, t in NUMPY_DTYPES.items() if np.issubdtype(t, np.floating))


class RequestError(ValueError):
    """A request that breaks the contract; the message names the input."""


Dim = int | str


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor. ``values`` constrains contents:
    ``"nonnegative"`` (raw ids), ``"index:B"`` (0 <= v < B), ``"length:L"`` (1 <= v <= L).
    """

    name: str
    dtype: str
    dims: tuple[Dim, ...]
    values: str | None = None
    optional: bool = False

    @property
    def numpy_dtype(self) -> type:
        return NUMPY_DTYPES[self.dtype]

    @property
    def config_dims(self) -> list[int]:
        """Dims as written in config.pbtxt: fixed sizes stay, symbols become -1."""
        return [d if isinstance(d, int) else -1 for d in self.dims]


@dataclass(frozen=True)
class ModelSignature:
    """A model's tensors as its graph sees them. ``batched``: Triton batches requests (config
    ``max_batch_size`` > 0), every tensor's leading dim is "B" and each request brings B = 1."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: tuple[str, ...] = field(default=())
    batched: bool = False

    def __post_init__(self) -> None:
        if self.batched and any(t.dims[:1] != ("B",) for t in (*self.inputs, *self.outputs)):
            raise ValueError(f"{self.name}: every tensor of a batched model starts with dim 'B'")

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def config_dims(self, spec: TensorSpec) -> list[int]:
        """``spec``'s dims as config.pbtxt writes them: without the batch dim of a batched model."""
        return spec.config_dims[1:] if self.batched else spec.config_dims


def _t(name: str, dtype: str, *dims: Dim, values: str | None = None, optional: bool = False) -> TensorSpec:
    return TensorSpec(name, dtype, tuple(dims), values, optional)


# Public request (the ensemble, not batched): one user, its history and its N candidates; the
# leading 1 is the batch dimension of the models behind it (one request = one user).
USER_FEATURES_T = _t("user_features", "INT64", 1, F_U, values="nonnegative")
HISTORY_IDS_T = _t("history_ids", "INT64", 1, "L", values="nonnegative")
CANDIDATE_IDS_T = _t("candidate_ids", "INT64", 1, "N", values="nonnegative")
CANDIDATE_FEATURES_T = _t("candidate_features", "INT64", 1, "N", F_C, values="nonnegative")
TOP_K_T = _t("top_k", "INT32", 1, 1, optional=True)
RANKER_OUTPUTS = (
    _t("top_ids", "INT64", 1, "K"),
    _t("top_scores", "FP32", 1, "K"),
    _t("scores", "FP32", 1, "N"),
    _t("route", "BYTES", 1, 1),
)


def _batched(spec: TensorSpec) -> TensorSpec:
    """The public tensor ``spec`` [1, ...] as a batched model's [B, ...]."""
    return TensorSpec(spec.name, spec.dtype, ("B", *spec.dims[1:]), spec.values, spec.optional)


# The batched models' tensors: one row per request.
USER_EMB_T = _t("user_emb", "FP32", "B", F_U, "E")
HISTORY_EMB_T = _t("history_emb", "FP32", "B", "L", "E")
HISTORY_LEN_T = _t("history_len", "INT64", "B", 1, values="length:L")  # the request's L, for the tower
CANDIDATE_EMB_T = _t("candidate_emb", "FP32", "B", "N", C_TOKENS, "E")
USER_STATE_T = _t("user_state", "FP32", "B", "D")
HISTORY_KV_T = _t("history_kv", "FP32", "B", "L", "D")

ROUTES: tuple[str, ...] = ("auto", "light", "heavy", "cascade")
FIXED_ROUTES: tuple[str, ...] = ("light", "heavy", "cascade")  # what "auto" resolves to
DEFAULT_ROUTE = "auto"
# Request parameters. sent_at_unix_ms: when the client sent the request (Unix ms); the budget
# then counts from it, so time queued before the ranker is spent budget.
ROUTE_PARAM = "route"
BUDGET_PARAM = "latency_budget_ms"
SENT_AT_PARAM = "sent_at_unix_ms"
REQUEST_PARAMETERS: tuple[str, ...] = (ROUTE_PARAM, BUDGET_PARAM)


EMBEDDING_LOOKUP = ModelSignature(
    "embedding_lookup",
    inputs=tuple(_batched(t) for t in (USER_FEATURES_T, HISTORY_IDS_T, CANDIDATE_IDS_T, CANDIDATE_FEATURES_T)),
    outputs=(USER_EMB_T, HISTORY_EMB_T, CANDIDATE_EMB_T, HISTORY_LEN_T),
    batched=True,
)
USER_TOWER = ModelSignature(
    "user_tower",
    inputs=(USER_EMB_T, HISTORY_EMB_T, HISTORY_LEN_T),
    outputs=(USER_STATE_T, HISTORY_KV_T),
    batched=True,
)
# The scorers are called by the ranker (BLS) with several users' candidates at once.
SCORER_LIGHT = ModelSignature(
    "scorer_light",
    inputs=(
        _t("user_state", "FP32", "B", "D"),
        _t("candidate_emb", "FP32", "N", C_TOKENS, "E"),  # every user's candidates, one after another
        _t("candidate_user", "INT64", "N", values="index:B"),  # each candidate's user row
    ),
    outputs=(_t("scores", "FP32", "N"),),
)
SCORER_HEAVY = ModelSignature(
    "scorer_heavy",
    inputs=(
        _t("user_state", "FP32", "B", "D"),
        _t("history_kv", "FP32", "B", "L", "D"),  # padded to the longest history
        _t("history_len", "INT64", "B", values="length:L"),
        _t("candidate_emb", "FP32", "B", "N", C_TOKENS, "E"),  # a block of N candidates per user row, padded
    ),
    outputs=(_t("scores", "FP32", "B", "N"),),
)
PER_CANDIDATE_BASELINE = ModelSignature(
    "per_candidate_baseline",
    inputs=(
        _t("user_features", "INT64", "N", F_U, values="nonnegative"),
        _t("history_ids", "INT64", "N", "L", values="nonnegative"),
        _t("candidate_ids", "INT64", "N", values="nonnegative"),
        _t("candidate_features", "INT64", "N", F_C, values="nonnegative"),
    ),
    outputs=(_t("scores", "FP32", "N"),),
)
RANKER = ModelSignature(
    "ranker",
    inputs=(USER_STATE_T, HISTORY_KV_T, CANDIDATE_EMB_T, _batched(CANDIDATE_IDS_T), _batched(TOP_K_T)),
    outputs=tuple(_batched(t) for t in RANKER_OUTPUTS),
    parameters=REQUEST_PARAMETERS,
    batched=True,
)
ADAPTIVE_RANKING = ModelSignature(
    "adaptive_ranking",
    inputs=(USER_FEATURES_T, HISTORY_IDS_T, CANDIDATE_IDS_T, CANDIDATE_FEATURES_T, TOP_K_T),
    outputs=RANKER_OUTPUTS,
    parameters=REQUEST_PARAMETERS,
)

# Models exported to ONNX (and built as TensorRT engines), in pipeline order.
ENGINE_MODELS: dict[str, ModelSignature] = {
    s.name: s for s in (EMBEDDING_LOOKUP, USER_TOWER, SCORER_LIGHT, SCORER_HEAVY, PER_CANDIDATE_BASELINE)
}
MODELS: dict[str, ModelSignature] = {**ENGINE_MODELS, RANKER.name: RANKER, ADAPTIVE_RANKING.name: ADAPTIVE_RANKING}


@dataclass(frozen=True)
class RankingResult:
    """The ensemble's answer for one user (served, or computed in process by serving/inprocess.py),
    without the batch dimension."""

    top_ids: np.ndarray  # (K,) int64, best first
    top_scores: np.ndarray  # (K,) float32
    scores: np.ndarray  # (N,) float32, in candidate order
    route: str  # the route taken


def as_request(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One user's arrays (user_features [F_U], history_ids [L], ..., top_k [1]) as the public
    request's tensors ([1, F_U], [1, L], ..., [1, 1]): a view, no copy."""
    return {name: np.asarray(a)[None] for name, a in arrays.items()}


def validate_inputs(sig: ModelSignature, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Check ``arrays`` against ``sig``; return the bound symbol sizes.

    Raises RequestError naming the offending input (and the other input a
    symbol was bound from, for mismatches). Checks dtype, rank, fixed dims,
    symbol agreement across inputs, DIM_LIMITS, the ``values`` constraint and
    that float inputs are finite.
    """
    bound: dict[str, tuple[int, str]] = {}
    for spec in sig.inputs:
        if spec.name not in arrays:
            if spec.optional:
                continue
            raise RequestError(f"missing required input '{spec.name}'")
        a = arrays[spec.name]
        if a.dtype != np.dtype(spec.numpy_dtype):
            raise RequestError(f"input '{spec.name}' must be {spec.dtype}, got {a.dtype}")
        if a.ndim != len(spec.dims):
            raise RequestError(
                f"input '{spec.name}' must have {len(spec.dims)} dims {list(spec.dims)}, got shape {list(a.shape)}"
            )
        if sig.batched and a.shape[0] != 1:
            raise RequestError(f"input '{spec.name}' must hold one user (batch dim 1), got {a.shape[0]}")
        for axis, (dim, size) in enumerate(zip(spec.dims, a.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise RequestError(f"input '{spec.name}' dim {axis} must be {dim}, got {size}")
                continue
            if dim in bound and bound[dim][0] != size:
                size0, name0 = bound[dim]
                raise RequestError(f"input '{spec.name}' has {dim}={size} but '{name0}' has {dim}={size0}")
            lo, hi = DIM_LIMITS.get(dim, (1, None))
            if size < lo or (hi is not None and size > hi):
                raise RequestError(
                    f"input '{spec.name}' has {dim}={size}, allowed {lo}..{hi if hi is not None else 'any'}"
                )
            bound[dim] = (size, spec.name)
    sizes = {k: v[0] for k, v in bound.items()}
    for spec in sig.inputs:
        if spec.name not in arrays:
            continue
        if spec.values is not None:
            _check_values(spec, arrays[spec.name], sizes)
        if spec.dtype in FLOAT_DTYPES:
            _check_finite(spec, arrays[spec.name])
    return sizes


def _check_finite(spec: TensorSpec, a: np.ndarray) -> None:
    # One isfinite pass on the happy path; counting happens only for the error message.
    finite = np.isfinite(a)
    if finite.all():
        return
    bad = a.size - int(np.count_nonzero(finite))
    raise RequestError(f"input '{spec.name}' has {bad} NaN/Inf values; values must be finite")


def _check_values(spec: TensorSpec, a: np.ndarray, sizes: dict[str, int]) -> None:
    if a.size == 0:
        return
    lo_v, hi_v = int(a.min()), int(a.max())
    if spec.values == "nonnegative":
        if lo_v < 0:
            raise RequestError(f"input '{spec.name}' has a negative id ({lo_v}); ids must be >= 0")
        return
    kind, symbol = spec.values.split(":")
    n = sizes[symbol]
    lo, hi = (0, n - 1) if kind == "index" else (1, n)
    if lo_v < lo or hi_v > hi:
        raise RequestError(f"input '{spec.name}' values must lie in {lo}..{hi} ({symbol}={n}), got {lo_v}..{hi_v}")
