"""ONNX Runtime sessions of the engine models (CPU profile, in-process composition, evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from serving.contract import ModelSignature, RequestError, validate_inputs
from serving.engine_batch import BATCHING


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
    # Idle intra-op threads would spin for work, burning the cores the other instances need.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


def run_requests(
    session: ort.InferenceSession, sig: ModelSignature, requests: list[dict[str, np.ndarray]]
) -> list[dict[str, np.ndarray] | Exception]:
    """Each request's outputs, or its error (RequestError for a bad request, naming the input).

    A batched model's valid requests go through one call (serving/engine_batch.py); if that call
    fails they are run one by one, so a request that breaks the engine fails alone."""
    results: list[dict[str, np.ndarray] | Exception] = []
    for arrays in requests:
        try:
            validate_inputs(sig, arrays)
            results.append(arrays)
        except RequestError as exc:
            results.append(exc)
    valid = [i for i, r in enumerate(results) if not isinstance(r, Exception)]
    batching = BATCHING.get(sig.name) if sig.batched else None
    if batching is not None and len(valid) > 1:
        batch = [requests[i] for i in valid]
        try:
            outputs = dict(zip(sig.output_names, session.run(sig.output_names, batching.gather(batch)), strict=True))
            for i, out in zip(valid, batching.scatter(outputs, batch), strict=True):
                results[i] = out
            return results
        except Exception:  # isolate the request that broke the call: run them one by one
            pass
    for i in valid:
        feeds = {name: requests[i][name] for name in sig.input_names if name in requests[i]}
        try:
            results[i] = dict(zip(sig.output_names, session.run(sig.output_names, feeds), strict=True))
        except Exception as exc:  # an engine failure is this request's answer, not the batch's
            results[i] = exc
    return results
