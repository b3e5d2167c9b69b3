"""ranker: the BLS model that routes each request and broadcasts its user state to the scorers.

Lifecycle only; the request path is serving/ranker.py. ``tensor_library`` picks the arrays
(serving/arrays.py): "numpy" (CPU profile) or "torch" (GPU profile: inputs, scorer calls and
outputs by DLPack, zero copy, on the device Triton placed them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from serving import arrays
from serving.arrays import Array
from serving.composition import SharedState
from serving.contract import RANKER, RequestError
from serving.ranker import RankerConfig, RankerState, RankItem, RequestTime, ScorerError, rank_batch, response_arrays
from serving.request import parse_request
from serving.scorer_sessions import ScorerSessions
from serving.triton.ranker_metrics import RankerMetrics


def _error(message: str, code: int) -> object:
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


class RankerModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.cfg = RankerConfig.from_parameters({k: v["string_value"] for k, v in params.items()})
        self.library = arrays.load_library(self.cfg.tensor_library)
        self.state = RankerState.from_config(self.cfg)
        self.metrics = RankerMetrics(self.cfg.metrics_interval_ms / 1e3, self.state.load)
        self.sessions = None
        self.call_fn = self._score  # BLS to scorer_light / scorer_heavy
        if self.cfg.scorer_calls == "onnxruntime":  # the scorers' graphs in this process (CPU profile)
            self.sessions = ScorerSessions.from_repository(Path(args["model_repository"]).parent)
            self.call_fn = self.sessions

    def _placement(self, like: Array) -> dict[str, object]:
        """torch: ask for the scorer's scores on the device the candidates are on (no copy back)."""
        if self.library == "numpy":
            return {}
        kind, device = arrays.placement(like)
        memory = pb_utils.TRITONSERVER_MEMORY_GPU if kind == "gpu" else pb_utils.TRITONSERVER_MEMORY_CPU
        return {"preferred_memory": pb_utils.PreferredMemory(memory, device)}

    async def _score(self, tier: str, inputs: dict[str, Array]) -> Array:
        request = pb_utils.InferenceRequest(
            model_name=f"scorer_{tier}",
            inputs=[arrays.to_triton(pb_utils.Tensor, name, array) for name, array in inputs.items()],
            requested_output_names=["scores"],
            **self._placement(inputs["candidate_emb"]),
        )
        response = await request.async_exec()
        if response.has_error():
            raise ScorerError(f"scorer_{tier}: {response.error().message()}")
        return arrays.from_triton(pb_utils.get_output_tensor_by_name(response, "scores"), self.library)

    def _read(self, request: object) -> dict[str, Array]:
        tensors = {name: pb_utils.get_input_tensor_by_name(request, name) for name in RANKER.input_names}
        return {name: arrays.from_triton(t, self.library) for name, t in tensors.items() if t is not None}

    def _parse(self, request: object, start: float) -> tuple[RankItem, Array] | object:
        """The request's RankItem and candidate_ids [1, N], or its INVALID_ARG response."""
        inputs = self._read(request)
        try:
            parsed = parse_request(
                inputs, request.parameters(), self.cfg.policy.default_budget_ms, self.cfg.default_top_k
            )
        except RequestError as exc:
            return _error(f"ranker: {exc}", pb_utils.TritonError.INVALID_ARG)
        timing = RequestTime.of(parsed.options, self.cfg.heavy_timeout_ms, start)
        shared = SharedState(inputs["user_state"], inputs["history_kv"])  # (1, D), (1, L, D)
        return RankItem(shared, inputs["candidate_emb"][0], parsed.options.route, parsed.k, timing), inputs[
            "candidate_ids"
        ]

    async def execute(self, requests: list) -> list:
        # One batch: each request gets its own response (errors included); their scorer calls are shared.
        start = time.perf_counter()
        responses: list[object] = [self._parse(r, start) for r in requests]
        valid = [i for i, r in enumerate(responses) if isinstance(r, tuple)]
        outcomes = await rank_batch(self.call_fn, self.state, [responses[i][0] for i in valid]) if valid else []
        end = time.perf_counter()
        if self.state.load is not None:
            self.state.load.record(start, end)  # the instance was busy with the batch
        for i, outcome in zip(valid, outcomes):
            item, candidate_ids = responses[i]
            if isinstance(outcome, ScorerError):
                responses[i] = _error(f"ranker: {outcome}", pb_utils.TritonError.INTERNAL)
                continue
            self.metrics.record(outcome, (end - start) * 1e3, item.timing.over_budget(end))
            outputs = response_arrays(candidate_ids, outcome)
            responses[i] = pb_utils.InferenceResponse(
                [arrays.to_triton(pb_utils.Tensor, n, v) for n, v in outputs.items()]
            )
        self.metrics.after_execute()
        return responses

    def finalize(self) -> None:
        self.metrics.close()
        if self.sessions is not None:
            self.sessions.close()
        self.state = None
