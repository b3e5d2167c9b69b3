"""The scorer graphs in the ranker's own process: a ScoreBatcher CallFn without BLS hops (CPU profile).

    call = ScorerSessions.from_repository(Path("model_repository"), threads=1)
    scores = await call("heavy", heavy_inputs(users, candidates))     # [B, n]

Through BLS every scorer call crosses two more process boundaries (ranker stub -> server ->
scorer stub and back), 1-2 ms each on a small CPU, several times a small call's compute. Here
the ranker runs ``scorer_light/1/model.onnx`` and ``scorer_heavy/1/model.onnx`` itself in ONNX
Runtime, each call on a worker thread (ONNX Runtime releases the GIL), so a stage's calls and
the other tier's still run side by side while the event loop goes on. The GPU profile keeps BLS:
there the scorers are TensorRT engines that Triton owns.

Inputs are validated against the scorer's signature first, as the scorer model would; any
failure is a ScorerError naming the scorer, as a failed BLS call is.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from serving.batcher import ScorerError
from serving.contract import ENGINE_MODELS, RequestError
from serving.onnx_session import make_session, run_checked
from serving.routing import TIERS


class ScorerSessions:
    def __init__(self, sessions: dict[str, ort.InferenceSession], workers: int = 2) -> None:
        missing = sorted(set(TIERS) - set(sessions))
        if missing:
            raise ValueError(f"scorer sessions missing for tiers {missing}")
        self.sessions = sessions
        # Two workers: light and heavy (or two micro-batches of one stage) at once, as two BLS calls ran.
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer")

    @classmethod
    def from_repository(cls, repository: Path, threads: int = 1, workers: int = 2) -> ScorerSessions:
        """Sessions on ``<repository>/scorer_<tier>/1/model.onnx`` (the files the scorer models serve)."""
        return cls({t: make_session(Path(repository) / f"scorer_{t}" / "1" / "model.onnx", threads) for t in TIERS},
                   workers)

    def run(self, tier: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """One scorer call, synchronously: ``scores`` ([N] light, [B, n] heavy)."""
        name = f"scorer_{tier}"
        try:
            return run_checked(self.sessions[tier], ENGINE_MODELS[name], inputs)["scores"]
        except RequestError as exc:
            raise ScorerError(f"{name}: {exc}") from None
        except Exception as exc:  # an engine failure fails this call, as a failed BLS call does
            raise ScorerError(f"{name}: {type(exc).__name__}: {exc}") from None

    async def __call__(self, tier: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.run, tier, inputs)

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.sessions = {}
