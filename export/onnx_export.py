"""ONNX export of the served graphs, named and shaped by export/signature.py.

    .venv/bin/python -m export.build --preset small    # calls export_all() after training

Each model is written with the signature's input/output names, opset 19 and a
dynamic axis for every symbolic dim (L, N, B, K). ``random_inputs`` draws valid
inputs for any size, for parity tests and engine checks.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from export.models import RankingModel
from export.serving import SERVING_MODULES
from export.signature import ENGINE_MODELS, ModelSignature, TensorSpec

log = logging.getLogger(__name__)

OPSET = 19
# Export-time example sizes: distinct primes so a dim the tracer froze shows up in parity tests.
EXAMPLE_SIZES = {"L": 7, "N": 11, "B": 3, "K": 5}


def model_dims(model: RankingModel) -> dict[str, int]:
    """The architecture symbols E and D of a model."""
    return {"E": model.embedding.dim, "D": model.tower.d_model}


def dynamic_axes(sig: ModelSignature) -> dict[str, dict[int, str]]:
    """{tensor name: {axis: symbol}} for every symbolic dim except E and D (fixed per model)."""
    axes: dict[str, dict[int, str]] = {}
    for spec in sig.inputs + sig.outputs:
        dyn = {i: d for i, d in enumerate(spec.dims) if isinstance(d, str) and d not in ("E", "D")}
        if dyn:
            axes[spec.name] = dyn
    return axes


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


def export_model(model: RankingModel, name: str, path: Path) -> Path:
    """Export one served graph to ``path`` (ONNX, weights inline)."""
    sig = ENGINE_MODELS[name]
    module = SERVING_MODULES[name](model).eval()
    sizes = {**EXAMPLE_SIZES, **model_dims(model)}
    example = random_inputs(sig, sizes, np.random.default_rng(0))
    args = tuple(torch.from_numpy(example[n]) for n in sig.input_names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it still gives the
        # plainest graphs for TensorRT (no functions, explicit dynamic_axes).
        warnings.simplefilter("ignore", category=DeprecationWarning)
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=sig.input_names,
            output_names=sig.output_names,
            dynamic_axes=dynamic_axes(sig),
            opset_version=OPSET,
            dynamo=False,
            do_constant_folding=True,
        )
    log.info("exported %s -> %s (%.1f MB)", name, path, path.stat().st_size / 1e6)
    return path


def export_all(model: RankingModel, model_repository: Path) -> dict[str, Path]:
    """Write ``model_repository/<name>/1/model.onnx`` for every engine model."""
    return {
        name: export_model(model, name, model_repository / name / "1" / "model.onnx") for name in ENGINE_MODELS
    }
