"""What the TensorRT build derives, in pure Python: optimization profiles, file names, which engines.

    python3 -m export.tensorrt_build --model-repository ... --cache ...   # in the image; uses these

Profiles come from serving/contract.py: every symbolic dim gets min / opt / max from
``DIM_LIMITS`` (min, max) and ``OPT_SIZES`` (the shape TensorRT tunes for); E and D are fixed
per exported model and read from the ONNX graph. Unit-tested without TensorRT.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx

from serving.contract import DIM_LIMITS, ENGINE_MODELS, ModelSignature

PLAN_FILE = "model.plan"  # config.pbtxt's default_model_filename
ONNX_FILE = "model.onnx"
STAMP_FILE = "model.plan.json"  # what a plan was built from and for
# Typical sizes TensorRT tunes kernels for: one request (B = 1), the ranker's micro-batch of candidates,
# a 64-item history.
OPT_SIZES = {"L": 64, "N": 512, "B": 1}
# per_candidate_baseline tiles the history per candidate (N x L): its max is capped to keep the build sane.
MAX_OVERRIDES = {"per_candidate_baseline": {"N": 1024, "L": 64}}

Shape = tuple[int, ...]


def fixed_dims(onnx_path: Path, sig: ModelSignature) -> dict[str, int]:
    """E and D (the dims fixed per exported model) read from the graph's inputs."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    values = {v.name: v for v in graph.input}
    found: dict[str, int] = {}
    for spec in sig.inputs:
        dims = values[spec.name].type.tensor_type.shape.dim
        for d_sig, d in zip(spec.dims, dims):
            if d_sig in ("E", "D") and d.HasField("dim_value"):
                found[d_sig] = d.dim_value
    return found


def profile(sig: ModelSignature, fixed: dict[str, int]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """{input name: (min, opt, max) shapes} for every non-optional input of ``sig``."""
    limits = {**DIM_LIMITS, **{s: (DIM_LIMITS[s][0], v) for s, v in MAX_OVERRIDES.get(sig.name, {}).items()}}

    def size(dim: int | str, which: int) -> int:
        if isinstance(dim, int):
            return dim
        if dim in fixed:
            return fixed[dim]
        if dim not in limits:
            raise ValueError(f"{sig.name}: dim {dim!r} has no limits and no fixed size (fixed: {fixed})")
        lo, hi = limits[dim]
        return (lo, min(max(OPT_SIZES.get(dim, lo), lo), hi), hi)[which]

    return {
        spec.name: tuple(tuple(size(d, i) for d in spec.dims) for i in range(3))
        for spec in sig.inputs
        if not spec.optional
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stamp(onnx_path: Path, device: str, trt_version: str) -> dict[str, str]:
    """What a plan depends on: the exact ONNX graph, the GPU and the TensorRT version."""
    return {"onnx_sha256": sha256(onnx_path), "device": device, "tensorrt": trt_version}


def engines_to_build(model_repository: Path, device: str, trt_version: str, force: bool = False) -> list[str]:
    """Engine models whose plan is missing or was built from another graph, GPU or TensorRT."""
    todo = []
    for name in ENGINE_MODELS:
        version = model_repository / name / "1"
        onnx_path, stamp_path = version / ONNX_FILE, version / STAMP_FILE
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path} is missing: run `make export` (and `make fp8`) first")
        current = stamp(onnx_path, device, trt_version)
        built = json.loads(stamp_path.read_text()) if stamp_path.is_file() else None
        if force or not (version / PLAN_FILE).is_file() or built != current:
            todo.append(name)
    return todo
