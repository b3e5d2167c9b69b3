"""The Python-backend models without a server: serving/triton/ (loaded through each model.py).

A small typed fake of ``triton_python_backend_utils`` is installed into ``sys.modules``
per test (monkeypatch); the model files are then imported fresh from their paths.
The ranker's BLS calls go to a fake executor that runs the scorers in ONNX Runtime
through ``onnx_session.run_checked``, so every scorer request the ranker builds is also
validated against the scorer's signature. The ONNX files come from a freshly
initialised tiny model exported to tmp_path.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.config import PRESETS
from export.onnx_export import export_model, model_dims
from export.samples import random_inputs
from export.train import build_model
from serving.arrays import cascade_merge, top_k_indices
from serving.contract import (
    ENGINE_MODELS,
    L_MAX,
    MODELS,
    RANKER,
    SCORER_LIGHT,
    ModelSignature,
    RequestError,
    validate_inputs,
)
from serving.onnx_session import make_session, run_checked

REPO = Path(__file__).resolve().parents[1] / "model_repository"
PB_UTILS = "triton_python_backend_utils"


# --- the fake triton_python_backend_utils ---------------------------------------------------------


class Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        if not isinstance(name, str) or not isinstance(array, np.ndarray):
            raise TypeError(f"Tensor(name: str, array: np.ndarray), got {type(name).__name__}, {type(array).__name__}")
        self._name, self._array = name, array
        self.via_dlpack = False  # built by from_dlpack (the ranker's torch path)

    @classmethod
    def from_dlpack(cls, name: str, tensor: Any) -> Tensor:
        """As pb_utils: an object with ``__dlpack__`` / ``__dlpack_device__``, C-contiguous only."""
        if not (hasattr(tensor, "__dlpack__") and hasattr(tensor, "__dlpack_device__")):
            raise TypeError(f"Tensor.from_dlpack needs a DLPack object, got {type(tensor).__name__}")
        array = np.from_dlpack(tensor)  # zero copy on the CPU
        if not array.flags.c_contiguous:
            raise ValueError("DLPack tensor is not contiguous. Only contiguous DLPack tensors are supported.")
        out = cls(name, array)
        out.via_dlpack = True
        return out

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array

    def to_dlpack(self) -> Any:
        return self._array.__dlpack__()  # a "dltensor" capsule, as pb_utils returns


class PreferredMemory:
    def __init__(self, preferred_memory_type: int, preferred_device_id: int = 0) -> None:
        self.preferred_memory_type, self.preferred_device_id = preferred_memory_type, preferred_device_id


class TritonError(Exception):
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        if not isinstance(message, str):
            raise TypeError(f"TritonError message must be str, got {type(message).__name__}")
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class InferenceResponse:
    def __init__(self, output_tensors: list[Tensor] | None = None, error: TritonError | None = None) -> None:
        if output_tensors is not None and not all(isinstance(t, Tensor) for t in output_tensors):
            raise TypeError("output_tensors must be a list of Tensor")
        if error is not None and not isinstance(error, TritonError):
            raise TypeError(f"error must be a TritonError, got {type(error).__name__}")
        self._tensors, self._error = list(output_tensors or []), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def output_tensors(self) -> list[Tensor]:
        return self._tensors


class InferenceRequest:
    """An incoming request (tests build them) or a BLS request (the ranker builds them)."""

    executor: Callable[[InferenceRequest], InferenceResponse] | None = None  # set per fake module

    def __init__(
        self,
        model_name: str = "",
        inputs: list[Tensor] | tuple[Tensor, ...] = (),
        requested_output_names: list[str] | tuple[str, ...] = (),
        parameters: dict[str, Any] | None = None,
        preferred_memory: PreferredMemory | None = None,
    ) -> None:
        if not all(isinstance(t, Tensor) for t in inputs):
            raise TypeError("inputs must be a list of Tensor")
        if preferred_memory is not None and not isinstance(preferred_memory, PreferredMemory):
            raise TypeError(f"preferred_memory must be a PreferredMemory, got {type(preferred_memory).__name__}")
        self.preferred_memory = preferred_memory
        self.model_name = model_name
        self._inputs = list(inputs)
        self.requested_output_names = list(requested_output_names)
        self._parameters = json.dumps(parameters or {})

    def inputs(self) -> list[Tensor]:
        return self._inputs

    def parameters(self) -> str:
        return self._parameters

    def exec(self) -> InferenceResponse:
        if self.executor is None:
            raise RuntimeError("no BLS executor installed")
        return self.executor(self)

    async def async_exec(self) -> InferenceResponse:
        await asyncio.sleep(0)  # let concurrent micro-batches interleave
        return self.exec()


class Metric:
    def __init__(self, family: MetricFamily, labels: dict[str, str]) -> None:
        self.family, self.labels, self.value = family, dict(labels), 0.0

    def increment(self, value: float) -> None:
        if self.family.kind != MetricFamily.COUNTER or value < 0:
            raise ValueError(f"increment({value}) on {self.family.name}")
        self.value += value

    def set(self, value: float) -> None:
        if self.family.kind != MetricFamily.GAUGE:
            raise ValueError(f"set() on counter {self.family.name}")
        self.value = float(value)


class MetricFamily:
    COUNTER, GAUGE = 0, 1

    def __init__(self, name: str, description: str, kind: int) -> None:
        self.name, self.description, self.kind = name, description, kind
        self.metrics: list[Metric] = []

    def Metric(self, labels: dict[str, str] | None = None) -> Metric:  # noqa: N802 (pb_utils' spelling)
        metric = Metric(self, labels or {})
        self.metrics.append(metric)
        return metric

    def value(self, **labels: str) -> float:
        return sum(m.value for m in self.metrics if m.labels == labels)


def _by_name(tensors: list[Tensor], name: str) -> Tensor | None:
    return next((t for t in tensors if t.name() == name), None)


def make_pb_utils(executor: Callable[[InferenceRequest], InferenceResponse] | None) -> ModuleType:
    mod = ModuleType(PB_UTILS)
    families: list[MetricFamily] = []

    class _Request(InferenceRequest):
        pass

    _Request.executor = staticmethod(executor) if executor else None

    class _Family(MetricFamily):
        def __init__(self, name: str, description: str, kind: int) -> None:
            super().__init__(name, description, kind)
            families.append(self)

    mod.Tensor = Tensor
    mod.PreferredMemory = PreferredMemory
    mod.TRITONSERVER_MEMORY_CPU, mod.TRITONSERVER_MEMORY_GPU = 0, 2  # tritonserver.h's enum values
    mod.TritonError = TritonError
    mod.InferenceResponse = InferenceResponse
    mod.InferenceRequest = _Request
    mod.MetricFamily = _Family
    mod.families = families
    mod.get_input_tensor_by_name = lambda request, name: _by_name(request.inputs(), name)
    mod.get_output_tensor_by_name = lambda response, name: _by_name(response.output_tensors(), name)
    return mod


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    """A model repository layout (<model>/1/model.onnx) of a fresh tiny model; returns it and E, D."""
    root = tmp_path_factory.mktemp("repo")
    model = build_model(PRESETS["tiny"]).eval()
    for name in ENGINE_MODELS:
        export_model(model, name, root / name / "1" / "model.onnx")
    return root, model_dims(model)


@pytest.fixture(scope="module")
def scorer_sessions(tiny_repo: tuple[Path, dict[str, int]]) -> dict[str, ort.InferenceSession]:
    root, _ = tiny_repo
    return {name: make_session(root / name / "1" / "model.onnx") for name in ("scorer_light", "scorer_heavy")}


TRITON_MODULES = ("serving.triton.onnx_model", "serving.triton.ranker_metrics", "serving.triton.ranker_model")


def _install(monkeypatch: pytest.MonkeyPatch, pb: ModuleType) -> Iterator[ModuleType]:
    monkeypatch.setitem(sys.modules, PB_UTILS, pb)
    for name in TRITON_MODULES:  # re-import against this fake
        sys.modules.pop(name, None)
    yield pb
    for name in TRITON_MODULES:
        sys.modules.pop(name, None)


@pytest.fixture
def pb_utils(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    yield from _install(monkeypatch, make_pb_utils(None))


def load_model_py(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_triton_model_{path.parent.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def model_args(config_path: Path, repository: Path, **parameters: str) -> dict[str, str]:
    """The ``args`` Triton passes to initialize(), with parameter overrides."""
    cfg = text_format.Parse(config_path.read_text(), mc.ModelConfig())
    for key, value in parameters.items():
        cfg.parameters[key].string_value = value
    return {
        "model_config": json_format.MessageToJson(cfg, preserving_proto_field_name=True),
        "model_name": cfg.name,
        "model_repository": str(repository / cfg.name),
        "model_version": "1",
        "model_instance_kind": "CPU",
    }


def request(arrays: dict[str, np.ndarray], **parameters: Any) -> InferenceRequest:
    return InferenceRequest(inputs=[Tensor(k, v) for k, v in arrays.items()], parameters=parameters)


def outputs(response: InferenceResponse) -> dict[str, np.ndarray]:
    assert not response.has_error(), response.error().message()
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


def assert_invalid_arg(response: InferenceResponse, *words: str) -> None:
    assert response.has_error(), "expected an error response"
    assert response.error().code() == TritonError.INVALID_ARG
    for word in words:
        assert word in response.error().message()


# --- onnx_runner.py -----------------------------------------------------------------------------------


def _sizes(name: str, dims: dict[str, int], seed: int = 0) -> dict[str, int]:
    """Sizes of one request to ``name``: a batched model's request holds one user; L and N vary
    with ``seed`` so that a batch of requests is ragged."""
    users = 1 if ENGINE_MODELS[name].batched else 2
    return {"L": 5 + seed, "N": 7 + 2 * seed, "B": users, **dims}


def _runner(name: str, tiny_repo: tuple[Path, dict[str, int]]) -> Any:
    root, _ = tiny_repo
    module = load_model_py(REPO / name / "1" / "model.py")  # imports OnnxModel
    runner = module.TritonPythonModel()
    runner.initialize(model_args(REPO / name / "configs" / "cpu.pbtxt", root))
    return runner


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
def test_runner_outputs_equal_run_checked(name: str, pb_utils: ModuleType, tiny_repo):
    root, dims = tiny_repo
    runner = _runner(name, tiny_repo)
    sig: ModelSignature = ENGINE_MODELS[name]
    reference = make_session(root / name / "1" / "model.onnx")
    batch = [random_inputs(sig, _sizes(name, dims, seed), np.random.default_rng(seed)) for seed in range(3)]
    responses = runner.execute([request(a) for a in batch])
    assert len(responses) == len(batch)
    for arrays, response in zip(batch, responses):
        got = outputs(response)
        assert list(got) == sig.output_names
        for key, value in run_checked(reference, sig, arrays).items():
            np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)
    runner.finalize()


def _neg_id(a: dict[str, np.ndarray]) -> None:
    a["candidate_ids"][0] = -5


def _poison(name: str, value: float, count: int = 3) -> Callable[[dict[str, np.ndarray]], None]:
    """Sets the first ``count`` values of input ``name`` to ``value`` (NaN, inf or -inf)."""

    def mutate(a: dict[str, np.ndarray]) -> None:
        a[name].reshape(-1)[:count] = value

    return mutate


BAD_REQUESTS: list[tuple[str, Callable[[dict[str, np.ndarray]], None], tuple[str, ...]]] = [
    ("embedding_lookup", _neg_id, ("candidate_ids", "negative")),
    (
        "embedding_lookup",
        lambda a: a.update(candidate_features=a["candidate_features"][:, :-1]),
        ("candidate_features",),
    ),
    ("embedding_lookup", lambda a: a.update(history_ids=a["history_ids"].astype(np.float32)), ("history_ids",)),
    ("embedding_lookup", lambda a: a.pop("user_features"), ("user_features", "missing")),
    ("embedding_lookup", lambda a: a.update(user_features=np.zeros(5, np.int64)), ("user_features",)),
    ("embedding_lookup", lambda a: a.update(history_ids=np.zeros((1, L_MAX + 1), np.int64)), ("history_ids", "L=")),
    ("user_tower", lambda a: a.update(history_len=np.full((1, 1), 99, np.int64)), ("history_len",)),
    ("user_tower", lambda a: a.update(user_emb=np.concatenate([a["user_emb"]] * 2)), ("user_emb", "one user")),
    ("scorer_light", lambda a: a["candidate_user"].__setitem__(0, 2), ("candidate_user",)),
    ("scorer_heavy", lambda a: a["history_len"].__setitem__(0, 10**3), ("history_len",)),
    ("scorer_heavy", lambda a: a.update(history_kv=a["history_kv"][:1]), ("history_kv", "B=")),
    ("scorer_light", _poison("candidate_emb", np.nan), ("candidate_emb", "3 NaN/Inf", "finite")),
    ("scorer_light", _poison("user_state", np.inf, 1), ("user_state", "1 NaN/Inf")),
    ("scorer_heavy", _poison("history_kv", -np.inf, 2), ("history_kv", "2 NaN/Inf")),
    ("user_tower", _poison("history_emb", np.nan, 1), ("history_emb", "1 NaN/Inf")),
]


@pytest.mark.parametrize(
    "name, mutate, words",
    BAD_REQUESTS,
    ids=[
        "negative-id",
        "N-mismatch",
        "wrong-dtype",
        "missing-input",
        "wrong-fixed-dim",
        "L-over-limit",
        "tower-history-len-over-L",
        "two-users-in-one-request",
        "candidate-user-out-of-range",
        "history-len-over-L",
        "B-mismatch",
        "nan-candidate-emb",
        "inf-user-state",
        "neg-inf-history-kv",
        "nan-history-emb",
    ],
)
def test_runner_bad_request_fails_alone(name: str, mutate, words: tuple[str, ...], pb_utils: ModuleType, tiny_repo):
    _, dims = tiny_repo
    runner = _runner(name, tiny_repo)
    sig = ENGINE_MODELS[name]
    good = [random_inputs(sig, _sizes(name, dims, s), np.random.default_rng(s)) for s in (1, 2)]
    bad = random_inputs(sig, _sizes(name, dims, 3), np.random.default_rng(3))
    mutate(bad)
    responses = runner.execute([request(good[0]), request(bad), request(good[1])])
    assert_invalid_arg(responses[1], f"{name}:", *words)
    for response in (responses[0], responses[2]):
        assert list(outputs(response)) == sig.output_names


FLOAT_INPUTS = [(sig.name, spec.name) for sig in MODELS.values() for spec in sig.inputs if spec.dtype == "FP32"]


@pytest.mark.parametrize("model, name", FLOAT_INPUTS, ids=[f"{m}-{n}" for m, n in FLOAT_INPUTS])
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_validate_inputs_rejects_non_finite_floats(model: str, name: str, value: float):
    sig = MODELS[model]
    sizes = {"L": 5, "N": 7, "B": 1 if sig.batched else 2, "K": 3, "E": 4, "D": 6}
    arrays = random_inputs(sig, sizes, np.random.default_rng(0))
    validate_inputs(sig, arrays)  # the base is valid
    arrays[name].reshape(-1)[[0, -1]] = value
    with pytest.raises(RequestError, match=rf"^input '{name}' has 2 NaN/Inf values; values must be finite$"):
        validate_inputs(sig, arrays)


def test_validate_inputs_accepts_extreme_finite_floats():
    """Finite is the only condition: the largest, smallest and subnormal float32 values pass."""
    sig = SCORER_LIGHT
    arrays = random_inputs(sig, {"N": 7, "B": 2, "E": 4, "D": 6}, np.random.default_rng(0))
    info = np.finfo(np.float32)
    arrays["candidate_emb"].reshape(-1)[:4] = [info.max, info.min, info.smallest_subnormal, -0.0]
    assert validate_inputs(sig, arrays)["N"] == 7


def test_validate_inputs_checks_shapes_before_values():
    """A NaN in a wrongly shaped input is reported as the shape error (the more basic one)."""
    arrays = random_inputs(SCORER_LIGHT, {"N": 7, "B": 2, "E": 4, "D": 6}, np.random.default_rng(0))
    arrays["candidate_emb"] = np.full((7, 2, 4), np.nan, np.float32)
    with pytest.raises(RequestError, match="candidate_emb' dim 1"):
        validate_inputs(SCORER_LIGHT, arrays)


# --- ranker/1/model.py ------------------------------------------------------------------------------


class FakeBLS:
    """Runs scorer_light / scorer_heavy requests in ONNX Runtime; records every call."""

    def __init__(self, sessions: dict[str, ort.InferenceSession], fail: set[str] = frozenset()) -> None:
        self.sessions, self.fail = sessions, fail
        self.calls: list[tuple[str, dict[str, np.ndarray]]] = []
        self.requests: list[InferenceRequest] = []

    def __call__(self, req: InferenceRequest) -> InferenceResponse:
        arrays = {t.name(): t.as_numpy() for t in req.inputs()}
        self.calls.append((req.model_name, arrays))
        self.requests.append(req)
        assert req.requested_output_names == ["scores"]
        if req.model_name in self.fail:
            return InferenceResponse(error=TritonError(f"{req.model_name} is unavailable", TritonError.UNAVAILABLE))
        scores = run_checked(self.sessions[req.model_name], ENGINE_MODELS[req.model_name], arrays)["scores"]
        return InferenceResponse([Tensor("scores", scores)])


MICRO_BATCH, CASCADE_M, N = 7, 6, 20


def record_inprocess_calls(monkeypatch: pytest.MonkeyPatch, sessions: Any, bls: FakeBLS) -> None:
    """The in-process scorer calls (serving/scorer_sessions.py) recorded into ``bls.calls`` as the
    BLS ones are, and failed for the scorers in ``bls.fail``: the same tests check both paths."""
    real = sessions.run

    def run(tier: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
        name = f"scorer_{tier}"
        bls.calls.append((name, inputs))
        if name in bls.fail:
            raise RuntimeError(f"{name} is unavailable")
        return real(tier, inputs)

    monkeypatch.setattr(sessions, "run", run)


# The ranker's profiles on CPU arrays: the CPU one (NumPy; the scorers' graphs in process, and by
# BLS) and the production one (torch tensors through DLPack, BLS; here on the CPU, as a KIND_GPU
# config read without a GPU).
@pytest.fixture(
    params=[("configs/cpu.pbtxt", "onnxruntime"), ("configs/cpu.pbtxt", "bls"), ("config.pbtxt", "bls")],
    ids=["numpy", "numpy-bls", "torch"],
)
def ranker_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, scorer_sessions, tiny_repo
) -> Iterator[tuple[Any, FakeBLS, ModuleType]]:
    config, scorer_calls = request.param
    bls = FakeBLS(scorer_sessions)
    for pb in _install(monkeypatch, make_pb_utils(bls)):
        module = load_model_py(REPO / "ranker" / "1" / "model.py")
        model = module.TritonPythonModel()
        args = model_args(REPO / "ranker" / config, tiny_repo[0], micro_batch=str(MICRO_BATCH),
                          cascade_m=str(CASCADE_M), scorer_calls=scorer_calls)
        model.initialize(args)
        if scorer_calls == "onnxruntime":
            record_inprocess_calls(monkeypatch, model.sessions, bls)  # model.sessions: the lifecycle class's
        yield model, bls, pb
        model.finalize()


def ranker_inputs(dims: dict[str, int], seed: int, top_k: int | None = 5) -> dict[str, np.ndarray]:
    """One request to the ranker: one user ([1, ...] tensors), as the ensemble hands it over."""
    arrays = random_inputs(RANKER, {"L": 9, "N": N, "K": 5, "B": 1, **dims}, np.random.default_rng(seed))
    if top_k is not None:
        arrays["top_k"] = np.array([[top_k]], dtype=np.int32)
    return arrays


def full_scores(sessions: dict[str, ort.InferenceSession], arrays: dict[str, np.ndarray], tier: str) -> np.ndarray:
    """One un-batched scorer call over all N candidates (B = 1)."""
    if tier == "light":
        inputs = {
            "user_state": arrays["user_state"],  # (1, D)
            "candidate_emb": arrays["candidate_emb"][0],  # (N, C, E)
            "candidate_user": np.zeros(N, dtype=np.int64),
        }
        return run_checked(sessions["scorer_light"], SCORER_LIGHT, inputs)["scores"]
    inputs = {
        "user_state": arrays["user_state"],
        "history_kv": arrays["history_kv"],  # (1, L, D)
        "history_len": np.array([arrays["history_kv"].shape[1]], dtype=np.int64),
        "candidate_emb": arrays["candidate_emb"],  # (1, N, C, E): one block
    }
    return run_checked(sessions["scorer_heavy"], ENGINE_MODELS["scorer_heavy"], inputs)["scores"][0]


def expected_ranking(sessions, arrays: dict[str, np.ndarray], route: str, k: int) -> np.ndarray:
    light, heavy = full_scores(sessions, arrays, "light"), full_scores(sessions, arrays, "heavy")
    if route == "light":
        scores = light
    elif route == "heavy":
        scores = heavy
    else:
        top = top_k_indices(light, min(N, max(CASCADE_M, k)))
        scores = cascade_merge(light, heavy[top], top)
    return scores


@pytest.mark.parametrize("route", ["light", "heavy", "cascade"], ids=str)
def test_ranker_routes(route: str, ranker_env, scorer_sessions, tiny_repo):
    model, bls, _ = ranker_env
    arrays = ranker_inputs(tiny_repo[1], seed=7)
    (response,) = asyncio.run(model.execute([request(arrays, route=route)]))
    got = outputs(response)
    scores = expected_ranking(scorer_sessions, arrays, route, k=5)
    top = top_k_indices(scores, 5)
    assert got["top_ids"].shape == got["top_scores"].shape == (1, 5) and got["scores"].shape == (1, N)
    np.testing.assert_array_equal(got["top_ids"][0], arrays["candidate_ids"][0][top])
    np.testing.assert_allclose(got["scores"][0], scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got["top_scores"][0], scores[top], rtol=1e-5, atol=1e-7)
    assert got["route"].tolist() == [[route.encode()]]
    assert got["top_ids"].dtype == np.int64 and got["scores"].dtype == np.float32
    # Broadcast, not tiling: every scorer call gets the one user row, candidates split into calls.
    for model_name, inputs in bls.calls:
        assert inputs["user_state"].shape == (1, tiny_repo[1]["D"])
        if model_name == "scorer_light":
            assert inputs["candidate_emb"].shape[0] <= MICRO_BATCH
            assert not inputs["candidate_user"].any()
        else:  # one block of this user's candidates and its history as it is
            assert inputs["candidate_emb"].shape[0] == 1 and inputs["candidate_emb"].shape[1] <= MICRO_BATCH
            assert inputs["history_kv"].shape == arrays["history_kv"].shape
    scored = {
        t: sum(int(np.prod(a["candidate_emb"].shape[:-2])) for m, a in bls.calls if m == f"scorer_{t}")
        for t in ("light", "heavy")
    }
    expected = {"light": (N, 0), "heavy": (0, N), "cascade": (N, CASCADE_M)}[route]
    assert (scored["light"], scored["heavy"]) == expected
    # The torch profile builds every scorer input and output by DLPack and asks for the scores
    # on the candidates' device (the CPU here); the NumPy profile leaves the placement to Triton.
    torch_path = model.cfg.tensor_library == "torch"
    if model.cfg.scorer_calls == "onnxruntime":  # no BLS request at all: the graphs ran in process
        assert not bls.requests and bls.calls
        assert {t.via_dlpack for t in response.output_tensors()} == {False}
        return
    assert {t.via_dlpack for r in bls.requests for t in r.inputs()} == {torch_path}
    assert {t.via_dlpack for t in response.output_tensors()} == ({True, False} if torch_path else {False})
    placements = {
        None
        if r.preferred_memory is None
        else (r.preferred_memory.preferred_memory_type, r.preferred_memory.preferred_device_id)
        for r in bls.requests
    }
    assert placements == ({(0, 0)} if torch_path else {None})  # (TRITONSERVER_MEMORY_CPU, device 0)


@pytest.mark.parametrize("budget, route", [(1e6, "heavy"), (1e-3, "light")], ids=["roomy-budget", "tight-budget"])
def test_ranker_auto_follows_budget(budget: float, route: str, ranker_env, scorer_sessions, tiny_repo):
    model, _, _ = ranker_env
    arrays = ranker_inputs(tiny_repo[1], seed=8, top_k=None)  # default_top_k from the config
    (response,) = asyncio.run(model.execute([request(arrays, latency_budget_ms=budget)]))
    got = outputs(response)
    assert got["route"].tolist() == [[route.encode()]]
    scores = expected_ranking(scorer_sessions, arrays, route, k=model.cfg.default_top_k)
    top = top_k_indices(scores, model.cfg.default_top_k)
    np.testing.assert_array_equal(got["top_ids"][0], arrays["candidate_ids"][0][top])


def test_ranker_bad_requests_fail_alone(ranker_env, tiny_repo):
    model, _, _ = ranker_env
    dims = tiny_repo[1]
    good = ranker_inputs(dims, seed=1)
    short_ids = {**ranker_inputs(dims, seed=2), "candidate_ids": np.arange(N - 1, dtype=np.int64)[None]}
    negative = ranker_inputs(dims, seed=3)
    negative["candidate_ids"][0, 3] = -1
    zero_k = ranker_inputs(dims, seed=4, top_k=0)
    requests = [
        request(good, route="light"),
        request(short_ids, route="light"),
        request(negative, route="light"),
        request(ranker_inputs(dims, seed=5), route="fastest"),
        request(zero_k, route="light"),
        request(ranker_inputs(dims, seed=6), route="light", latency_budget_ms=-1),
        request(good, route="light"),
    ]
    responses = asyncio.run(model.execute(requests))
    assert len(responses) == len(requests)
    assert_invalid_arg(responses[1], "ranker:", "candidate_ids", "N=")
    assert_invalid_arg(responses[2], "candidate_ids", "negative")
    assert_invalid_arg(responses[3], "route", "fastest")
    assert_invalid_arg(responses[4], "top_k")
    assert_invalid_arg(responses[5], "latency_budget_ms")
    np.testing.assert_array_equal(outputs(responses[0])["top_ids"], outputs(responses[6])["top_ids"])


@pytest.mark.parametrize("name", ["user_state", "history_kv", "candidate_emb"])
def test_ranker_non_finite_input_fails_alone(name: str, ranker_env, tiny_repo):
    """INVALID_ARG naming the input, before any scorer call; the requests around it are answered."""
    model, bls, _ = ranker_env
    dims = tiny_repo[1]
    good = ranker_inputs(dims, seed=1)
    poisoned = ranker_inputs(dims, seed=2)
    poisoned[name].reshape(-1)[1] = np.nan
    responses = asyncio.run(
        model.execute([request(good, route="light"), request(poisoned, route="cascade"), request(good, route="light")])
    )
    assert_invalid_arg(responses[1], "ranker:", f"input '{name}' has 1 NaN/Inf values")
    np.testing.assert_array_equal(outputs(responses[0])["top_ids"], outputs(responses[2])["top_ids"])
    # The scorers saw only the two good light requests: the bad cascade never reached them.
    assert {m for m, _ in bls.calls} == {"scorer_light"}
    assert sum(call["candidate_emb"].shape[0] for _, call in bls.calls) == 2 * N


def test_ranker_scorer_failure_is_internal_for_that_request(ranker_env, tiny_repo):
    model, bls, _ = ranker_env
    bls.fail = {"scorer_heavy"}
    dims = tiny_repo[1]
    responses = asyncio.run(
        model.execute([request(ranker_inputs(dims, 1), route="light"), request(ranker_inputs(dims, 2), route="heavy")])
    )
    assert outputs(responses[0])["route"].tolist() == [[b"light"]]
    assert responses[1].has_error()
    assert responses[1].error().code() == TritonError.INTERNAL
    assert "scorer_heavy" in responses[1].error().message()
    assert model.state.load is not None and model.state.load.service_ms > 0  # both requests timed


def test_ranker_metrics(ranker_env, tiny_repo):
    model, _, pb = ranker_env
    dims = tiny_repo[1]
    # Budgets far from any real latency: the last request always misses, the others never do.
    plan = [("light", 1e9), ("light", 1e9), ("cascade", 1e9), ("light", 1e-6)]
    responses = asyncio.run(
        model.execute([request(ranker_inputs(dims, s), route=r, latency_budget_ms=b) for s, (r, b) in enumerate(plan)])
    )
    assert all(not r.has_error() for r in responses)
    families = {f.name: f for f in pb.families}
    model.metrics.flush()  # what the stub's flusher task does every metrics_interval_ms
    assert families["ranker_requests_total"].value(route="light") == 3
    assert families["ranker_requests_total"].value(route="cascade") == 1
    assert families["ranker_candidates_scored_total"].value(tier="light") == 4 * N
    assert families["ranker_candidates_scored_total"].value(tier="heavy") == CASCADE_M
    assert families["ranker_latency_ms_total"].value(route="light") > 0
    assert families["ranker_latency_ms_total"].value(route="cascade") > 0
    assert 0 < families["ranker_utilization"].value() <= 1  # the instance was just busy
    assert families["ranker_expected_wait_ms"].value() >= 0
    assert families["ranker_budget_misses_total"].value(route="light") == 1
    assert families["ranker_budget_misses_total"].value(route="cascade") == 0


def test_ranker_batch_equals_each_request_alone(ranker_env, tiny_repo):
    """Requests of different routes, N and L in one execute(): each answer equals that request
    ranked alone, and each tier is called once per stage for all of them."""
    model, bls, _ = ranker_env
    dims = tiny_repo[1]
    plan = [("light", 9, 20), ("heavy", 3, 11), ("cascade", 14, 17), ("light", 1, 5), ("cascade", 6, 20)]
    batch = []
    for seed, (route, length, n) in enumerate(plan):
        arrays = random_inputs(RANKER, {"L": length, "N": n, "K": 5, "B": 1, **dims}, np.random.default_rng(seed))
        arrays["top_k"] = np.array([[5]], dtype=np.int32)
        batch.append(request(arrays, route=route))
    together = asyncio.run(model.execute(batch))
    calls_together = len(bls.calls)
    alone = [asyncio.run(model.execute([r]))[0] for r in batch]
    for got, want in zip(together, alone):
        got, want = outputs(got), outputs(want)
        assert got["route"].tolist() == want["route"].tolist()
        np.testing.assert_array_equal(got["top_ids"], want["top_ids"])
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-5, atol=1e-7)
    # Together: stage 1 = light for the light and cascade requests + heavy for the heavy one, stage 2 =
    # heavy for both cascades' top M. MICRO_BATCH (7) splits the stages: still fewer calls than alone.
    assert calls_together < len(bls.calls) - calls_together
