"""ranker: the BLS model that routes each request and broadcasts its user state.

Lifecycle only: the request path is model_repository/pipeline.py (tested without
Triton); parsing and top-k are model_repository/ranking.py, routing
model_repository/routing.py. Bad requests get INVALID_ARG naming the input.

Parameter ``tensor_library`` picks the arrays the request path runs on
(model_repository/tensors.py): "numpy" (CPU profile, ``as_numpy()``) or "torch" (GPU
profile: inputs, scorer calls and outputs by DLPack, zero copy, tensors stay on the
device Triton gave them; torch is imported only then). Default "numpy".
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

# Before this repo's imports: the 2.51 stub runs Python isolated, so PYTHONDONTWRITEBYTECODE is
# ignored, and a model_repository/__pycache__ folder would look like a model to Triton.
sys.dont_write_bytecode = True

import numpy as np
import triton_python_backend_utils as pb_utils

from export.signature import RANKER, RequestError
from model_repository import tensors
from model_repository.load import LoadMeter
from model_repository.metric_buffer import MetricBuffer
from model_repository.pipeline import RankerState, ScorerError, SharedState, heavy_deadline_ms, rank
from model_repository.ranking import parse_parameters, parse_top_k
from model_repository.routing import CostModel, RoutePolicy, TierCost
from model_repository.tensors import Array


def _params(config: dict) -> dict[str, str]:
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        p = _params(json.loads(args["model_config"]))
        policy = RoutePolicy(
            cascade_m=int(p["cascade_m"]),
            confidence_threshold=float(p["confidence_threshold"]),
            default_budget_ms=float(p["default_budget_ms"]),
            safety_factor=float(p["safety_factor"]),
        )
        priors = {t: TierCost(float(p[f"{t}_fixed_ms"]), float(p[f"{t}_per_candidate_ms"])) for t in ("light", "heavy")}
        window_ms = float(p.get("load_window_ms", "1000"))  # 0 = load-unaware auto
        load = LoadMeter(window_ms / 1e3) if window_ms > 0 else None
        self.state = RankerState(policy, CostModel(priors), micro_batch=int(p["micro_batch"]), load=load)
        self.default_top_k = int(p["default_top_k"])
        self.library = tensors.load_library(p.get("tensor_library", "numpy"))
        self.heavy_timeout_ms = float(p.get("heavy_timeout_ms", "2000"))
        # Metric updates go to the server in batches (metric_buffer.py): each one is an IPC round trip.
        self.metrics = MetricBuffer(float(p.get("metrics_interval_ms", "250")) / 1e3)
        self._flusher: asyncio.Task | None = None
        self._metrics()

    def _metrics(self) -> None:
        counter, gauge = pb_utils.MetricFamily.COUNTER, pb_utils.MetricFamily.GAUGE
        self.m_requests = pb_utils.MetricFamily("ranker_requests_total", "Requests answered, by route taken", counter)
        self.m_candidates = pb_utils.MetricFamily(
            "ranker_candidates_scored_total", "Candidates scored, by tier", counter
        )
        self.m_misses = pb_utils.MetricFamily(
            "ranker_budget_misses_total", "Requests over their latency budget", counter
        )
        self.m_latency = pb_utils.MetricFamily(
            "ranker_latency_ms_total", "Summed ranker latency (ms), by route", counter
        )
        self.m_fallbacks = pb_utils.MetricFamily(
            "ranker_fallbacks_total", "Cascade / auto requests answered by light as heavy failed or was late", counter
        )
        # Keep the families referenced: a Metric outlives its family only in error (2.51 raises).
        self.m_utilization = pb_utils.MetricFamily(
            "ranker_utilization", "Busy fraction of this ranker instance over its load window", gauge
        )
        self.m_wait = pb_utils.MetricFamily(
            "ranker_expected_wait_ms", "Likely queueing before the ranker now (auto's load signal)", gauge
        )
        self.g_utilization = self.m_utilization.Metric(labels={})
        self.g_wait = self.m_wait.Metric(labels={})
        self._by_label: dict[tuple[str, str], object] = {}

    def _metric(self, family: object, label: str, value: str) -> object:
        key = (id(family), value)
        if key not in self._by_label:
            self._by_label[key] = family.Metric(labels={label: value})
        return self._by_label[key]

    def _count(self, family: object, label: str, value: str, amount: float = 1.0) -> None:
        self.metrics.increment((family, label, value), amount)

    def flush_metrics(self) -> None:
        """Send the buffered metric updates to Triton (the flusher task calls this every interval)."""
        for (family, label, value), amount in self.metrics.drain().items():
            self._metric(family, label, value).increment(amount)
        if self.state is not None and self.state.load is not None:
            self.g_utilization.set(self.state.load.utilization())
            self.g_wait.set(self.state.load.expected_wait_ms())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.metrics.interval_s)
            if self.metrics.due():
                self.flush_metrics()

    def _placement(self, like: Array) -> dict[str, object]:
        """torch: ask for the scorer's scores on the device the candidates are on (no copy back)."""
        if self.library == "numpy":
            return {}
        kind, device = tensors.placement(like)
        memory = pb_utils.TRITONSERVER_MEMORY_GPU if kind == "gpu" else pb_utils.TRITONSERVER_MEMORY_CPU
        return {"preferred_memory": pb_utils.PreferredMemory(memory, device)}

    async def _score(self, tier: str, inputs: dict[str, Array]) -> Array:
        request = pb_utils.InferenceRequest(
            model_name=f"scorer_{tier}",
            inputs=[tensors.to_triton(pb_utils.Tensor, name, array) for name, array in inputs.items()],
            requested_output_names=["scores"],
            **self._placement(inputs["candidate_emb"]),
        )
        response = await request.async_exec()
        if response.has_error():
            raise ScorerError(f"scorer_{tier}: {response.error().message()}")
        return tensors.from_triton(pb_utils.get_output_tensor_by_name(response, "scores"), self.library)

    async def _handle(self, request: object) -> object:
        start = time.perf_counter()
        arrays = {}
        for name in RANKER.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensors.from_triton(tensor, self.library)
        try:
            sizes = tensors.validate_inputs(RANKER, arrays)
            options = parse_parameters(request.parameters(), self.state.policy.default_budget_ms)
            k = parse_top_k(arrays.get("top_k"), sizes["N"], self.default_top_k)
        except RequestError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"ranker: {exc}", pb_utils.TritonError.INVALID_ARG)
            )
        shared = SharedState.from_tower(arrays["user_state"], arrays["history_kv"])
        waited_ms = options.waited_ms(time.time() * 1e3)  # None unless the client stamped it
        try:
            result = await rank(
                self._score,
                self.state,
                shared,
                arrays["candidate_emb"],
                options.route,
                k,
                options.latency_budget_ms,
                start=start,
                deadline_ms=heavy_deadline_ms(options, self.heavy_timeout_ms),
                waited_ms=waited_ms,
            )
        except ScorerError as exc:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"ranker: {exc}", pb_utils.TritonError.INTERNAL)
            )
        finally:
            if self.state.load is not None:
                self.state.load.record(start, time.perf_counter())
        elapsed_ms = (time.perf_counter() - start) * 1e3
        self._count(self.m_requests, "route", result.route)
        self._count(self.m_latency, "route", result.route, elapsed_ms)
        for tier, n in result.candidates_scored.items():
            self._count(self.m_candidates, "tier", tier, n)
        if result.fallback is not None:
            self._count(self.m_fallbacks, "reason", result.fallback)
        if elapsed_ms + (waited_ms or 0.0) > options.latency_budget_ms:
            self._count(self.m_misses, "route", result.route)
        outputs = {
            "top_ids": tensors.take(arrays["candidate_ids"], result.top_idx),  # (K,) int64
            "top_scores": tensors.float32(tensors.take(result.scores, result.top_idx)),  # (K,)
            "scores": tensors.float32(result.scores),  # (N,)
            "route": np.array([result.route.encode()], dtype=np.object_),  # BYTES has no DLPack form
        }
        return pb_utils.InferenceResponse([tensors.to_triton(pb_utils.Tensor, n, v) for n, v in outputs.items()])

    async def execute(self, requests: list) -> list:
        # Requests are independent: each gets its own response, errors included.
        if self.metrics.interval_s > 0 and (self._flusher is None or self._flusher.done()):
            # The stub's event loop outlives execute(): the task sends what requests left pending.
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        responses = list(await asyncio.gather(*(self._handle(r) for r in requests)))
        if self._flusher is None and self.metrics.due():  # metrics_interval_ms 0: no flusher task
            self.flush_metrics()
        return responses

    def finalize(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
        self.flush_metrics()
        self.state = None
