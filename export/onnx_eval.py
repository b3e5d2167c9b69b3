"""Ranking quality of exported ONNX graphs, run request by request through ONNX Runtime.

    .venv/bin/python -m export.fp8 --preset tiny     # compares the FP8 graphs with the FP32 ones

The same composition the server runs (serving/composition.py): embedding_lookup, user_tower
once per request, then scorer_light and scorer_heavy on all n candidates at B = 1. Any mix of graphs
can be plugged in (say FP8 user_tower with FP32 scorers), so each quantized model's effect is
measured on its exact graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from export.world import Requests
from serving.composition import compose
from serving.contract import ENGINE_MODELS, as_request
from serving.onnx_session import make_session, run_checked

PIPELINE = ("embedding_lookup", "user_tower", "scorer_light", "scorer_heavy")


def sessions(paths: dict[str, Path], threads: int = 1) -> dict[str, ort.InferenceSession]:
    return {name: make_session(path, threads) for name, path in paths.items()}


def model_inputs(requests: Requests, row: int, run: dict) -> dict[str, dict[str, np.ndarray]]:
    """Inputs of every pipeline model for one request; ``run(name, inputs)`` computes upstream outputs."""
    return compose(run, as_request(requests.request_arrays(row))).model_inputs()


def pipeline_scores(graphs: dict[str, ort.InferenceSession], requests: Requests) -> dict[str, np.ndarray]:
    """{"light": (R, n), "heavy": (R, n)} click probabilities through ``graphs`` (one per PIPELINE model)."""

    def run(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_checked(graphs[name], ENGINE_MODELS[name], inputs)

    light, heavy = [], []
    for row in range(len(requests)):
        inputs = model_inputs(requests, row, run)
        light.append(run("scorer_light", inputs["scorer_light"])["scores"])
        heavy.append(run("scorer_heavy", inputs["scorer_heavy"])["scores"][0])  # (1, n): one block
    return {"light": np.stack(light), "heavy": np.stack(heavy)}


def output_error(
    reference: dict[str, ort.InferenceSession], name: str, test: ort.InferenceSession, requests: Requests
) -> dict[str, float]:
    """``test`` against ``reference[name]`` on the same inputs (the reference pipeline's): errors of its outputs."""

    def run(model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return run_checked(reference[model], ENGINE_MODELS[model], inputs)

    abs_sum, count, max_abs, ref_max = 0.0, 0, 0.0, 0.0
    for row in range(len(requests)):
        inputs = model_inputs(requests, row, run)[name]
        ref = run(name, inputs)
        got = run_checked(test, ENGINE_MODELS[name], inputs)
        for key, value in ref.items():
            diff = np.abs(got[key].astype(np.float64) - value)
            abs_sum, count = abs_sum + float(diff.sum()), count + diff.size
            max_abs = max(max_abs, float(diff.max()))
            ref_max = max(ref_max, float(np.abs(value).max()))
    return {"mean_abs": abs_sum / count, "max_abs": max_abs, "max_abs_relative_to_range": max_abs / max(ref_max, 1e-12)}
