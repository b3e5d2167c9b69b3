"""Send the tensors that grow with L and N through shared memory instead of the socket.

    result = infer_shared_memory(grpc_client, request, kind="system", admin_key=key, route="cascade")

``history_ids``, ``candidate_ids`` and ``candidate_features`` each get a POSIX region
(``multiprocessing.shared_memory``: tritonclient 2.51's helper imports ``pkg_resources``),
registered with the admin key the local server requires, destroyed in ``finally``. The client
must share the server's host. ``kind="cuda"`` needs a GPU; only its refusal without one is tested.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing import shared_memory
from types import ModuleType

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from client.ranking_client import (
    MODEL_NAME,
    RankingRequest,
    build_inputs,
    protocol_module,
    request_parameters,
    requested_outputs,
    result_from_response,
    timeout_kwargs,
)
from serving.contract import ADAPTIVE_RANKING, RankingResult
from serving.server.launcher import ADMIN_KEY_HEADER, GRPC_ADMIN_KEY_HEADER

log = logging.getLogger(__name__)

SHARED_MEMORY_KINDS: tuple[str, ...] = ("none", "system", "cuda")
SHM_INPUTS: tuple[str, ...] = ("history_ids", "candidate_ids", "candidate_features")
UNREGISTER_PATIENCE_S = 2.0  # how long a region may stay "in use" after its answer (_unregister)


class SharedMemoryError(RuntimeError):
    """Shared memory could not be set up (unavailable, or the server refused a registration)."""


def admin_headers(client: object, admin_key: str | None) -> dict[str, str] | None:
    """The header that carries ``admin_key`` for ``client``'s protocol (None without a key)."""
    if not admin_key:
        return None
    header = GRPC_ADMIN_KEY_HEADER if isinstance(client, grpcclient.InferenceServerClient) else ADMIN_KEY_HEADER
    return {header: admin_key}


def cuda_shared_memory_module() -> ModuleType:
    """tritonclient's CUDA shared-memory utilities, once a CUDA device is known to exist;
    SharedMemoryError saying why not otherwise."""
    try:
        import tritonclient.utils.cuda_shared_memory as cudashm
        from cuda import cudart
    except Exception as e:  # ImportError, or tritonclient's RuntimeError without cuda-python
        raise SharedMemoryError(f"CUDA shared memory is unavailable: tritonclient cannot load cuda-python ({e})") from e
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        raise SharedMemoryError(f"CUDA shared memory is unavailable: no CUDA device ({err})")
    return cudashm


def _region_name(tensor: str) -> str:
    return f"adaptive_ranking_{secrets.token_hex(6)}_{tensor}"


def _register(register: object, name: str, headers: dict[str, str] | None, *args: object) -> None:
    """Register one region; a refusal for want of the admin key becomes SharedMemoryError, other
    errors stay tritonclient's (status kept: an unreachable server still reads as one)."""
    try:
        register(name, *args, headers=headers)
    except InferenceServerException as e:
        message = f"registering shared-memory region '{name}' failed: {e.message()}"
        if "restricted" in str(e.message()):
            hint = " (the server restricts the shared-memory API: pass its admin key, CLI --admin-key)"
            raise SharedMemoryError(message + hint) from e
        raise InferenceServerException(message, status=e.status(), debug_details=e.debug_details()) from e


def _unregister(unregister: object, region: str, headers: dict[str, str] | None) -> None:
    """Unregister ``region``, retrying while the server still holds it: Triton 2.51 releases a
    request's inputs after sending its answer and refuses to unregister a region in use until
    then (server PR #7567; later servers defer the unregistration instead, PR #7743)."""
    deadline, delay = time.monotonic() + UNREGISTER_PATIENCE_S, 0.005
    while True:
        try:
            unregister(region, headers=headers)
            return
        except InferenceServerException as e:
            if "currently in use" not in str(e.message()) or time.monotonic() > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.1)


def _cleanup(action: object, what: str, *args: object, **kwargs: object) -> None:
    """Run one cleanup step; log, do not raise, so the other steps and the original error survive."""
    try:
        action(*args, **kwargs)
    except Exception as e:  # cleanup must go on
        log.warning("%s failed: %s", what, e)


def _destroy_system(shm: shared_memory.SharedMemory) -> None:
    shm.close()
    shm.unlink()


@contextmanager
def shared_memory_inputs(
    client: object,
    arrays: dict[str, np.ndarray],
    kind: str = "system",
    admin_key: str | None = None,
    device_id: int = 0,
) -> Iterator[list]:
    """InferInputs for ``arrays``, each backed by a registered region of its own; the
    regions are unregistered and destroyed on exit."""
    if kind not in ("system", "cuda"):
        raise ValueError(f"kind must be 'system' or 'cuda', got {kind!r}")
    module, headers = protocol_module(client), admin_headers(client, admin_key)
    cudashm = cuda_shared_memory_module() if kind == "cuda" else None
    inputs = []
    with ExitStack() as cleanup:  # runs in reverse: unregister before destroy, per region
        for name, array in arrays.items():
            spec = ADAPTIVE_RANKING.input(name)
            array = np.ascontiguousarray(array)
            if array.dtype != np.dtype(spec.numpy_dtype):  # the region holds raw bytes: no conversion after this
                raise ValueError(f"input '{name}' must be {spec.dtype}, got {array.dtype}")
            region = _region_name(name)
            if cudashm is None:
                key = f"/{region}"
                shm = shared_memory.SharedMemory(region, create=True, size=array.nbytes)
                cleanup.callback(_cleanup, _destroy_system, f"destroying {region}", shm)
                shm.buf[: array.nbytes] = memoryview(array).cast("B")
                _register(client.register_system_shared_memory, region, headers, key, array.nbytes)
                unregister = client.unregister_system_shared_memory
            else:
                handle = cudashm.create_shared_memory_region(region, array.nbytes, device_id)
                cleanup.callback(_cleanup, cudashm.destroy_shared_memory_region, f"destroying {region}", handle)
                cudashm.set_shared_memory_region(handle, [array])
                raw = cudashm.get_raw_handle(handle)
                _register(client.register_cuda_shared_memory, region, headers, raw, device_id, array.nbytes)
                unregister = client.unregister_cuda_shared_memory
            cleanup.callback(_cleanup, _unregister, f"unregistering {region}", unregister, region, headers)
            tensor = module.InferInput(name, list(array.shape), spec.dtype)
            tensor.set_shared_memory(region, array.nbytes)
            inputs.append(tensor)
        log.debug("registered %s shared-memory regions for %s", kind, ", ".join(arrays))
        yield inputs


def infer_shared_memory(
    client: grpcclient.InferenceServerClient | httpclient.InferenceServerClient,
    request: RankingRequest | dict[str, np.ndarray],
    kind: str = "system",
    admin_key: str | None = None,
    route: str | None = None,
    latency_budget_ms: float | None = None,
    top_k: int | None = None,
    client_timeout: float | None = None,
    device_id: int = 0,
) -> RankingResult:
    """Like ranking_client.infer, with SHM_INPUTS in shared memory (module docstring).

    Raises SharedMemoryError when shared memory cannot be set up and tritonclient's
    InferenceServerException when the server answers the request with an error."""
    arrays = request.arrays() if isinstance(request, RankingRequest) else request
    module = protocol_module(client)
    plain = {k: v for k, v in arrays.items() if k not in SHM_INPUTS}
    kwargs = timeout_kwargs(module, client_timeout)
    with shared_memory_inputs(client, {k: arrays[k] for k in SHM_INPUTS}, kind, admin_key, device_id) as shm:
        response = client.infer(
            MODEL_NAME,
            build_inputs(module, plain, top_k) + shm,
            outputs=requested_outputs(module),
            parameters=request_parameters(route, latency_budget_ms) or None,
            **kwargs,
        )
    return result_from_response(response)
