"""ONNX export of the served graphs, named and shaped by serving/contract.py.

    .venv/bin/python -m export.build --preset small    # calls export_all() after training

Each model is written with the signature's input/output names, opset 19 and a
dynamic axis for every symbolic dim (L, N, B, K).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from export.models import RankingModel
from export.samples import EXAMPLE_SIZES, random_inputs
from export.serving import SERVING_MODULES
from serving.contract import ENGINE_MODELS, ModelSignature

log = logging.getLogger(__name__)

OPSET = 19
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
    pin_fixed_dims(path, sig)
    log.info("exported %s -> %s (%.1f MB)", name, path, path.stat().st_size / 1e6)
    return path


def pin_fixed_dims(path: Path, sig: ModelSignature) -> None:
    """Write the contract's fixed sizes into the graph's declared input/output shapes where the
    tracer left a symbol (e.g. history_len's 1, computed from a shape), so configs and TensorRT
    profiles see the same fixed dims."""
    model = onnx.load(str(path))
    specs = {s.name: s for s in sig.inputs + sig.outputs}
    changed = False
    for value in list(model.graph.input) + list(model.graph.output):
        spec = specs.get(value.name)
        for d_sig, dim in zip(spec.dims if spec else (), value.type.tensor_type.shape.dim):
            if isinstance(d_sig, int) and (not dim.HasField("dim_value") or dim.dim_value != d_sig):
                dim.Clear()
                dim.dim_value = d_sig
                changed = True
    if changed:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


def export_all(model: RankingModel, model_repository: Path) -> dict[str, Path]:
    """Write ``model_repository/<name>/1/model.onnx`` for every engine model."""
    return {
        name: export_model(model, name, model_repository / name / "1" / "model.onnx") for name in ENGINE_MODELS
    }
