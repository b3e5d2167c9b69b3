"""ONNX Runtime sessions of the engine models (CPU profile, in-process composition, evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from serving.contract import ModelSignature, validate_inputs


def is_qdq_graph(path: Path) -> bool:
    """Whether the ONNX file holds QuantizeLinear / DequantizeLinear nodes (the FP8 export)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)


def make_session(path: Path, intra_op_threads: int = 1) -> ort.InferenceSession:
    """A CPU session; one intra-op thread per instance by default, since Triton runs
    several instances side by side on a small machine.

    FP8 QDQ graphs get basic graph optimizations only: ONNX Runtime 1.31's extended
    QDQ fusions refuse float8 Q/DQ pairs (or, with only those turned off, fuse them
    into wrong results), while the basic level runs the exact quantized graph."""
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run `make export` to train and export the models")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if is_qdq_graph(path) else ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    )
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def run_checked(
    session: ort.InferenceSession, sig: ModelSignature, arrays: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Validate ``arrays`` against ``sig`` (RequestError names the input), then run."""
    validate_inputs(sig, arrays)
    feeds = {name: arrays[name] for name in sig.input_names if name in arrays}
    return dict(zip(sig.output_names, session.run(sig.output_names, feeds), strict=True))
