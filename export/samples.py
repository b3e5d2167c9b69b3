"""Valid random inputs for any model of the signature, at any size (NumPy only).

Used for export examples, ONNX Runtime parity tests and the TensorRT engine check,
which runs where torch is not installed.
"""

from __future__ import annotations

import numpy as np

from serving.contract import ModelSignature, TensorSpec

# Export-time example sizes: distinct primes so a dim the tracer froze shows up in parity tests.
EXAMPLE_SIZES = {"L": 7, "N": 11, "B": 3, "K": 5}


def _random_tensor(spec: TensorSpec, sizes: dict[str, int], rng: np.random.Generator) -> np.ndarray:
    shape = tuple(d if isinstance(d, int) else sizes[d] for d in spec.dims)
    if spec.dtype == "FP32":
        return rng.standard_normal(shape).astype(np.float32)
    if spec.values == "nonnegative":
        # Raw ids: small ones (real vocabularies) and huge ones (hashing must not overflow).
        small = rng.integers(0, 5_000, shape)
        huge = rng.integers(2**62, 2**63 - 1, shape, dtype=np.int64)
        return np.where(rng.random(shape) < 0.9, small, huge).astype(np.int64)
    if spec.values is not None:
        kind, symbol = spec.values.split(":")
        lo, hi = (0, sizes[symbol]) if kind == "index" else (1, sizes[symbol] + 1)
        return rng.integers(lo, hi, shape).astype(spec.numpy_dtype)
    return rng.integers(1, 100, shape).astype(spec.numpy_dtype)


def random_inputs(
    sig: ModelSignature, sizes: dict[str, int], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Valid inputs for ``sig`` with the given symbol sizes (must include E and D for float inputs)."""
    return {spec.name: _random_tensor(spec, sizes, rng) for spec in sig.inputs if not spec.optional}
