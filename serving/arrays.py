"""The request path's array operations, on NumPy arrays or torch tensors.

Each function dispatches on its arguments' type and returns the same library; torch results
stay on the first argument's device. NumPy is the reference, torch reproduces it bit for bit
(tests/test_arrays.py). torch is imported only by ``load_library("torch")`` (GPU profile).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from serving.contract import ModelSignature, RequestError, TensorSpec
from serving.contract import validate_inputs as validate_numpy_inputs

if TYPE_CHECKING:
    import torch

Array: TypeAlias = "np.ndarray | torch.Tensor"

LIBRARIES: tuple[str, ...] = ("numpy", "torch")  # the ranker's `tensor_library` parameter

# Below this many candidates, or when K is a large share of N, one stable sort is
# as fast as argpartition plus the tie fix-up (NumPy top-k).
_PARTITION_MIN_N = 64


# --- library and Triton boundary ------------------------------------------------------------------


def load_library(name: str) -> str:
    """Check a ``tensor_library`` value and import what it needs (torch only when asked)."""
    if name not in LIBRARIES:
        raise ValueError(f"tensor_library must be one of {', '.join(LIBRARIES)}, got {name!r}")
    if name == "torch":
        importlib.import_module("torch")
    return name


def is_torch(x: object) -> bool:
    """True for a torch.Tensor, without importing torch."""
    torch_module = sys.modules.get("torch")
    return torch_module is not None and isinstance(x, torch_module.Tensor)


def _torch() -> Any:
    return sys.modules["torch"]  # only called on a tensor, so torch is loaded


def from_triton(pb_tensor: Any, library: str) -> Array:
    """A Triton tensor (``pb_utils.Tensor``) as an array of ``library``.

    numpy: ``as_numpy()`` (CPU memory only). torch: ``torch.from_dlpack`` of its DLPack
    capsule, zero copy, on the device Triton placed it (cuda:i with
    FORCE_CPU_ONLY_INPUT_TENSORS "no", else cpu).
    """
    if library == "numpy":
        return pb_tensor.as_numpy()
    return _torch().from_dlpack(pb_tensor.to_dlpack())


def to_triton(tensor_cls: Any, name: str, value: Array) -> Any:
    """``tensor_cls`` (``pb_utils.Tensor``) holding ``value``: NumPy by value, torch by DLPack.

    Triton's ``from_dlpack`` accepts only C-contiguous tensors, so a torch view is made
    contiguous first (a copy only if it is not already)."""
    if is_torch(value):
        return tensor_cls.from_dlpack(name, value.contiguous())
    return tensor_cls(name, value)


def placement(x: Array) -> tuple[str, int]:
    """("cpu", 0) or ("gpu", device index): where a scorer's outputs should be placed."""
    if is_torch(x) and x.device.type == "cuda":
        return "gpu", int(x.device.index or 0)
    return "cpu", 0


def to_numpy(x: Array) -> np.ndarray:
    """Host NumPy copy of a tensor (the array itself for NumPy)."""
    if is_torch(x):
        return x.detach().cpu().numpy()
    return x


# --- elementwise and layout ------------------------------------------------------------------------


def concatenate(parts: Sequence[Array]) -> Array:
    """Concatenate along axis 0 ([n_i, ...] -> [sum n_i, ...]); torch on parts[0]'s device."""
    if is_torch(parts[0]):
        device = parts[0].device
        return _torch().cat([p.to(device) for p in parts])
    return np.concatenate(parts)


def float32(x: Array) -> Array:
    """``x`` as float32, no copy if it already is."""
    if is_torch(x):
        return x.to(_torch().float32)
    return x.astype(np.float32, copy=False)


def int64_zeros(n: int, like: Array) -> Array:
    """Int64 zeros [n] of ``like``'s library and device."""
    if is_torch(like):
        torch_module = _torch()
        return torch_module.zeros(n, dtype=torch_module.int64, device=like.device)
    return np.zeros(n, dtype=np.int64)


def int64_vector(values: Sequence[int], like: Array) -> Array:
    """Int64 [len(values)] of ``like``'s library and device."""
    if is_torch(like):
        torch_module = _torch()
        return torch_module.tensor(list(values), dtype=torch_module.int64, device=like.device)
    return np.array(values, dtype=np.int64)


def int64_repeat(counts: Sequence[int], like: Array) -> Array:
    """Int64 [sum(counts)]: i repeated counts[i] times (each candidate's user row)."""
    values = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    if is_torch(like):
        return _torch().from_numpy(values).to(like.device)
    return values


def pad_stack(parts: Sequence[Array], length: int) -> Array:
    """[len(parts), length, ...] of parts [n_i, ...] (n_i <= length), zero-padded at the end of axis 1."""
    first = parts[0]
    if is_torch(first):
        torch_module = _torch()
        out = torch_module.zeros((len(parts), length, *first.shape[1:]), dtype=first.dtype, device=first.device)
    else:
        out = np.zeros((len(parts), length, *first.shape[1:]), dtype=first.dtype)
    for i, part in enumerate(parts):
        out[i, : part.shape[0]] = part.to(first.device) if is_torch(part) else part
    return out


def take(x: Array, idx: Array) -> Array:
    """Rows ``x[idx]`` ([N, ...] -> [len(idx), ...]); a torch index moves to x's device."""
    if is_torch(x):
        return x[idx.to(x.device)]
    return x[idx]


# --- top-k ----------------------------------------------------------------------------------------


def top_k_indices(scores: Array, k: int) -> Array:
    """Indices of the ``k`` highest scores [N] -> [min(k, N)], descending, ties by lower index.

    Identical to ``np.argsort(-scores, kind="stable")[:k]`` (NaN ranks last; -0.0 ties 0.0).
    NumPy: O(N + k log k) for k << N: argpartition finds the k-th value t, then all scores
    above t plus the lowest-index scores equal to t are sorted stably. torch: one stable
    sort of -scores (NaN sorts last there too), which for N <= N_MAX is a single kernel on
    the GPU where the partition trick would need host syncs.
    """
    if scores.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {list(scores.shape)}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = scores.shape[0]
    k = min(k, n)
    if is_torch(scores):
        return _torch().sort(-scores, stable=True).indices[:k]
    neg = -scores  # ascending order of neg == descending order of scores
    if k == 0:
        return np.empty(0, dtype=np.intp)
    if n < _PARTITION_MIN_N or 4 * k >= n:
        return np.argsort(neg, kind="stable")[:k]
    t = neg[np.argpartition(neg, k - 1)[k - 1]]  # k-th smallest of neg
    if np.isnan(t):  # fewer than k non-NaN scores: the NaN order needs the full sort
        return np.argsort(neg, kind="stable")[:k]
    above = np.flatnonzero(neg < t)  # ascending index, fewer than k of them
    tied = np.flatnonzero(neg == t)[: k - above.size]  # lowest indices first
    # Every tied value is below every `above` value, so ties only occur inside
    # each ascending group and the stable sort breaks them by index.
    sel = np.concatenate([above, tied])  # (k,)
    return sel[np.argsort(neg[sel], kind="stable")]


# --- cascade merge --------------------------------------------------------------------------------


def power_of_two_below(hi: float, floor: float) -> int:
    """The smallest integer e >= 0 with hi * 2**-e < floor (hi >= 0, floor > 0)."""
    e = 0 if hi < floor else max(0, math.floor(math.log2(hi / floor)))
    while math.ldexp(hi, -e) >= floor:  # at most two steps past the log2 estimate
        e += 1
    return e


def cascade_merge(light: Array, heavy_top: Array, top_idx: Array) -> Array:
    """Final scores [N] of a cascade: light [N] on all, heavy_top [M] on light's top M (top_idx [M]).

    Rule (scores are probabilities in [0, 1], as the scorers return):
    - re-scored candidates get their heavy score: out[top_idx] = heavy_top;
    - with floor = min(heavy_top), every other candidate gets light * 2**-e, e >= 0
      the smallest integer with max(light[rest]) * 2**-e < floor. Rest scores that
      are already below floor are kept unchanged (e = 0).
    Scaling by a power of two is exact in floating point (outside the subnormal
    range), so the rest keep their light order bit for bit (no new ties), all lie
    in [0, floor) and therefore rank strictly below every re-scored candidate, and
    the output stays in [0, 1].

    Fallback when the scaling cannot work (floor <= 0, or a negative light score,
    i.e. not probabilities): rest = floor - 1 - (max(light[rest]) - light), a shift
    that keeps the rest's order (weakly, up to rounding) and puts them below floor.
    """
    if light.ndim != 1 or heavy_top.ndim != 1 or heavy_top.shape != top_idx.shape:
        raise ValueError(
            f"need light [N], heavy_top [M], top_idx [M]; got {list(light.shape)}, "
            f"{list(heavy_top.shape)}, {list(top_idx.shape)}"
        )
    if is_torch(light):
        return _cascade_merge_torch(light, heavy_top, top_idx)
    n, m = light.shape[0], heavy_top.shape[0]
    dtype = np.result_type(light.dtype, heavy_top.dtype, np.float32)
    out = light.astype(dtype, copy=True)
    if m == 0:
        return out
    if top_idx.min() < 0 or top_idx.max() >= n:
        raise ValueError(f"top_idx must lie in 0..{n - 1}, got {top_idx.min()}..{top_idx.max()}")
    rest = np.ones(n, dtype=bool)
    rest[top_idx] = False
    if int(rest.sum()) != n - m:
        raise ValueError("top_idx must not repeat an index")
    out[top_idx] = heavy_top
    if m == n:
        return out
    floor = float(heavy_top.min())
    lo, hi = float(light[rest].min()), float(light[rest].max())
    if floor > 0 and lo >= 0:
        out[rest] = np.ldexp(out[rest], -power_of_two_below(hi, floor))
    else:
        out[rest] = (floor - 1.0) - (hi - light[rest].astype(np.float64))
    return out


def _cascade_merge_torch(light: Any, heavy_top: Any, top_idx: Any) -> Any:
    """``cascade_merge`` on tensors, bit-identical to the NumPy rule (on light's device)."""
    torch_module = _torch()
    heavy_top, top_idx = heavy_top.to(light.device), top_idx.to(light.device)
    n, m = light.shape[0], heavy_top.shape[0]
    dtype = torch_module.promote_types(torch_module.promote_types(light.dtype, heavy_top.dtype), torch_module.float32)
    out = light.to(dtype, copy=True)
    if m == 0:
        return out
    lo_idx, hi_idx = int(top_idx.min()), int(top_idx.max())
    if lo_idx < 0 or hi_idx >= n:
        raise ValueError(f"top_idx must lie in 0..{n - 1}, got {lo_idx}..{hi_idx}")
    rest = torch_module.ones(n, dtype=torch_module.bool, device=light.device)
    rest[top_idx] = False
    if int(rest.sum()) != n - m:
        raise ValueError("top_idx must not repeat an index")
    out[top_idx] = heavy_top.to(dtype)
    if m == n:
        return out
    floor = float(heavy_top.min())
    lo, hi = float(light[rest].min()), float(light[rest].max())
    if floor > 0 and lo >= 0:
        # A product with a power of two is rounded once, as np.ldexp is. For float32 scores the
        # float64 product is exact (2**-e >= 2**-300 keeps it normal), so the single rounding is
        # the cast back: np.ldexp's float32 value bit for bit, subnormal results included.
        scale = math.ldexp(1.0, -power_of_two_below(hi, floor))
        out[rest] = (out[rest].to(torch_module.float64) * scale).to(dtype)
    else:
        out[rest] = ((floor - 1.0) - (hi - light[rest].to(torch_module.float64))).to(dtype)
    return out


# --- request validation ---------------------------------------------------------------------------


def _host_stand_in(spec: TensorSpec | None, name: str, x: Any) -> np.ndarray:
    """A host array of x's shape and dtype, zero stride (one element, no copy), holding a value
    that passes ``spec``'s value constraint (1 for a length, else 0): only shapes are checked on it."""
    try:
        dtype = _torch().empty(0, dtype=x.dtype).numpy().dtype
    except TypeError:  # e.g. bfloat16: no NumPy dtype; Triton's config check makes this unreachable
        raise RequestError(f"input '{name}' has dtype {x.dtype}, which has no NumPy equivalent") from None
    fill = 1 if spec is not None and (spec.values or "").startswith("length:") else 0
    return np.lib.stride_tricks.as_strided(np.full(1, fill, dtype), shape=tuple(x.shape), strides=(0,) * x.ndim)


def _values_pass(spec: TensorSpec, x: Any, sizes: dict[str, int]) -> bool:
    """Device-side check of what ``validate_inputs`` checks on values: floats finite, ids in range."""
    if x.numel() == 0:
        return True
    if x.is_floating_point() and not bool(_torch().isfinite(x).all()):
        return False
    if spec.values is None:
        return True
    lo, hi = int(x.min()), int(x.max())
    if spec.values == "nonnegative":
        return lo >= 0
    kind, symbol = spec.values.split(":")
    bound = sizes[symbol]
    if kind == "index":
        return 0 <= lo and hi < bound
    return 1 <= lo and hi <= bound  # length


def validate_inputs(sig: ModelSignature, arrays: dict[str, Array]) -> dict[str, int]:
    """``serving.contract.validate_inputs`` for NumPy arrays or torch tensors (any device).

    NumPy: that function as is. torch: dtypes, ranks and sizes are checked on host
    stand-ins (no copy), the values on the device (one reduction per input); only a
    request that fails a value check is copied to the host, where the NumPy check
    raises its ``RequestError`` naming the input, so both paths give the same message.
    """
    if not any(is_torch(a) for a in arrays.values()):
        return validate_numpy_inputs(sig, arrays)
    specs = {s.name: s for s in sig.inputs}
    host = {k: _host_stand_in(specs.get(k), k, a) if is_torch(a) else a for k, a in arrays.items()}
    sizes = validate_numpy_inputs(sig, host)
    if all(_values_pass(specs[k], a, sizes) for k, a in arrays.items() if is_torch(a) and k in specs):
        return sizes
    return validate_numpy_inputs(sig, {k: to_numpy(a) for k, a in arrays.items()})
