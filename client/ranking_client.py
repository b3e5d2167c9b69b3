"""Build and send adaptive_ranking requests with tritonclient (gRPC or HTTP).

    from client.ranking_client import RankingRequest, infer
    request = RankingRequest.from_requests(world.sample_requests(1, 256, seed=0), row=0)
    result = infer(grpc_client, request, route="cascade", top_k=10)

Names and dtypes come from serving/contract.py; nothing here knows the models.
``build_inputs``, ``requested_outputs``, ``request_parameters`` and ``result_from_response``
are the pieces ``infer`` is made of; client/shared_memory.py and client/async_client.py
reuse them with other inputs or other (asyncio) clients.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from export.world import Requests
from serving.contract import ADAPTIVE_RANKING, RankingResult, as_request

MODEL_NAME = ADAPTIVE_RANKING.name


@dataclass(frozen=True)
class RankingRequest:
    """One public request: a user, its history and N candidates (raw ids)."""

    user_features: np.ndarray  # (F_U,) int64
    history_ids: np.ndarray  # (L,) int64, oldest first
    candidate_ids: np.ndarray  # (N,) int64
    candidate_features: np.ndarray  # (N, F_C) int64

    @classmethod
    def from_requests(cls, requests: Requests, row: int) -> RankingRequest:
        """Row ``row`` of a batch of world (or MovieLens) requests, history unpadded."""
        return cls(**requests.request_arrays(row))

    def fields(self) -> dict[str, np.ndarray]:
        """The user's arrays as they are ([F_U], [L], [N], [N, F_C])."""
        return {
            "user_features": self.user_features,
            "history_ids": self.history_ids,
            "candidate_ids": self.candidate_ids,
            "candidate_features": self.candidate_features,
        }

    def arrays(self) -> dict[str, np.ndarray]:
        """The request's tensors as the ensemble takes them ([1, F_U], [1, L], [1, N], [1, N, F_C])."""
        return as_request(self.fields())


def protocol_module(client: object) -> ModuleType:
    """``tritonclient.grpc`` for a gRPC client, else ``tritonclient.http`` (their InferInput etc.)."""
    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def build_inputs(module: ModuleType, arrays: dict[str, np.ndarray], top_k: int | None = None) -> list:
    """tritonclient InferInputs for the ensemble's tensors ``arrays`` ([1, ...]), typed by the signature."""
    if top_k is not None:
        arrays = {**arrays, "top_k": np.array([[top_k]], dtype=np.int32)}
    inputs = []
    for spec in ADAPTIVE_RANKING.inputs:
        if spec.name not in arrays:
            continue
        array = np.ascontiguousarray(arrays[spec.name])
        tensor = module.InferInput(spec.name, list(array.shape), spec.dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def request_parameters(route: str | None, latency_budget_ms: float | None) -> dict[str, object]:
    """Request parameters. With a budget, the send time too (``sent_at_unix_ms``, now): the
    server counts the budget from it, queueing before the ranker included. Build them just
    before sending."""
    params: dict[str, object] = {}
    if route is not None:
        params["route"] = route
    if latency_budget_ms is not None:
        params["latency_budget_ms"] = float(latency_budget_ms)
        params["sent_at_unix_ms"] = time.time() * 1e3
    return params


def requested_outputs(module: ModuleType) -> list:
    """Every output of the ensemble, read normally (not through shared memory)."""
    return [module.InferRequestedOutput(name) for name in ADAPTIVE_RANKING.output_names]


def result_from_response(response: object) -> RankingResult:
    """A tritonclient InferResult (gRPC or HTTP, blocking or asyncio) as a RankingResult (the one user's row)."""
    return RankingResult(
        response.as_numpy("top_ids")[0],
        response.as_numpy("top_scores")[0],
        response.as_numpy("scores")[0],
        response.as_numpy("route")[0, 0].decode(),
    )


def timeout_kwargs(module: ModuleType, client_timeout: float | None) -> dict[str, float]:
    """``client_timeout`` for a gRPC ``infer`` call; ValueError for HTTP, whose client takes
    its timeout once, as ``network_timeout`` when it is created."""
    if client_timeout is None:
        return {}
    if module is not grpcclient:
        raise ValueError("client_timeout is a gRPC option; create the HTTP client with network_timeout instead")
    return {"client_timeout": client_timeout}


def infer(
    client: grpcclient.InferenceServerClient | httpclient.InferenceServerClient,
    request: RankingRequest | dict[str, np.ndarray],
    route: str | None = None,
    latency_budget_ms: float | None = None,
    top_k: int | None = None,
    client_timeout: float | None = None,
) -> RankingResult:
    """Send one request; raises tritonclient's InferenceServerException on an error answer.
    ``client_timeout`` (seconds, gRPC only) is the call's deadline (``timeout_kwargs``)."""
    arrays = request.arrays() if isinstance(request, RankingRequest) else request
    module = protocol_module(client)
    response = client.infer(
        MODEL_NAME,
        build_inputs(module, arrays, top_k),
        outputs=requested_outputs(module),
        parameters=request_parameters(route, latency_budget_ms) or None,
        **timeout_kwargs(module, client_timeout),
    )
    return result_from_response(response)
