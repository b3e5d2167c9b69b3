"""Every hand-written Triton config against serving/contract.py and the exported ONNX graphs.

Parses ``model_repository/*/config.pbtxt`` and ``model_repository/*/configs/*.pbtxt``
with protobuf ``text_format`` into Triton's ``ModelConfig`` and checks names, dtypes,
dims, ``optional`` flags, platforms, the ensemble wiring and the ranker's parameters.
The ONNX checks read ``model_repository/<model>/1/model.onnx`` (``make export``);
a missing artifact fails with a message naming it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from serving.arrays import LIBRARIES
from serving.contract import B_MAX, DIM_LIMITS, ENGINE_MODELS, MODELS, ModelSignature, TensorSpec
from serving.ranker import RankerConfig

REPO = Path(__file__).resolve().parents[1] / "model_repository"
CONFIG_FILES = sorted(REPO.glob("*/config.pbtxt")) + sorted(REPO.glob("*/configs/*.pbtxt"))
ENSEMBLE = "adaptive_ranking"

# Triton config spelling of each signature dtype (BYTES is TYPE_STRING in configs).
CONFIG_DTYPE = {"INT64": "TYPE_INT64", "INT32": "TYPE_INT32", "FP32": "TYPE_FP32", "BYTES": "TYPE_STRING"}


def _id(path: Path) -> str:
    return str(path.relative_to(REPO))


def _model_dir(path: Path) -> Path:
    return path.parent if path.name == "config.pbtxt" else path.parent.parent


def load_config(path: Path) -> mc.ModelConfig:
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def _onnx_path(name: str) -> Path:
    path = REPO / name / "1" / "model.onnx"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `make export` (or `python -m export.build --preset tiny`)")
    return path


def _tensors(cfg: mc.ModelConfig, kind: str) -> dict[str, mc.ModelInput | mc.ModelOutput]:
    return {t.name: t for t in getattr(cfg, kind)}


def test_every_model_has_a_config():
    folders = {p.parent.name for p in REPO.glob("*/config.pbtxt")}
    assert folders == set(MODELS), "every signature model needs exactly one folder with a config.pbtxt"
    assert {p.parent.parent.name for p in REPO.glob("*/configs/cpu.pbtxt")} == set(ENGINE_MODELS) | {"ranker"}


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_id)
def test_config_matches_signature(path: Path):
    cfg = load_config(path)
    folder = _model_dir(path).name
    assert cfg.name == folder
    sig = MODELS[cfg.name]
    # A batched model's config leaves out the batch dim; TensorRT profiles stop at B_MAX.
    assert (cfg.max_batch_size > 0) == sig.batched, f"max_batch_size {cfg.max_batch_size} of {path}"
    assert cfg.max_batch_size <= B_MAX
    python_batched = sig.batched and cfg.backend == "python"
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        tensors = _tensors(cfg, kind)
        assert len(tensors) == len(getattr(cfg, kind)), f"duplicate {kind} names in {path}"
        assert set(tensors) == {s.name for s in specs}, f"{kind} names of {path}"
        for spec in specs:
            t = tensors[spec.name]
            assert mc.DataType.Name(t.data_type) == CONFIG_DTYPE[spec.dtype], f"{kind} '{spec.name}' dtype"
            assert list(t.dims) == sig.config_dims(spec), f"{kind} '{spec.name}' dims"
            if kind == "input":
                assert t.optional == spec.optional, f"input '{spec.name}' optional flag"
                # The Python runners batch requests of any L and N; Triton batches requests whose
                # variable dims differ only for ragged inputs. TensorRT takes no ragged batch here.
                ragged = python_batched and any(d == "L" or d == "N" for d in spec.dims)
                assert t.allow_ragged_batch == ragged, f"input '{spec.name}' allow_ragged_batch in {path}"


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
def test_engine_profiles(name: str):
    gpu = load_config(REPO / name / "config.pbtxt")
    assert gpu.platform == "tensorrt_plan" and not gpu.backend
    assert [g.kind for g in gpu.instance_group] == [mc.ModelInstanceGroup.KIND_GPU] * len(gpu.instance_group)
    assert gpu.instance_group, "production profile must place instances on the GPU explicitly"
    cpu = load_config(REPO / name / "configs" / "cpu.pbtxt")
    assert cpu.backend == "python" and not cpu.platform
    assert cpu.instance_group
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in cpu.instance_group)
    # The engine model (serving/triton/onnx_model.py) reads these as ints.
    assert int(cpu.parameters["intra_op_threads"].string_value) >= 1
    assert (REPO / name / "1" / "model.py").is_file()


RANKER_PROFILES = ["config.pbtxt", "configs/cpu.pbtxt"]
# What must differ between the ranker's profiles; everything else must be identical.
RANKER_PROFILE_PARAMETERS = ("FORCE_CPU_ONLY_INPUT_TENSORS", "scorer_calls", "tensor_library")


@pytest.mark.parametrize("profile", RANKER_PROFILES, ids=["gpu", "cpu"])
def test_ranker_config_is_the_code_default(profile: str):
    """The ranker's parameters parse into RankerConfig (unknown keys refused) and are its defaults:
    evaluation, perf and the demo read the same values from serving.ranker."""
    cfg = load_config(REPO / "ranker" / profile)
    assert cfg.backend == "python"
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert set(params) == set(RankerConfig().parameters()) | {"FORCE_CPU_ONLY_INPUT_TENSORS"}
    parsed = RankerConfig.from_parameters(params)
    assert replace(parsed, tensor_library="numpy", scorer_calls="bls") == RankerConfig()


def test_ranker_profiles():
    """GPU: device tensors by DLPack on a GPU instance, BLS to the TensorRT scorers; CPU: NumPy on the
    host, the scorers' graphs in the ranker's process; nothing else differs."""
    gpu = load_config(REPO / "ranker" / "config.pbtxt")
    cpu = load_config(REPO / "ranker" / "configs" / "cpu.pbtxt")
    gpu_params = {k: v.string_value for k, v in gpu.parameters.items()}
    cpu_params = {k: v.string_value for k, v in cpu.parameters.items()}
    assert gpu.instance_group and cpu.instance_group
    assert all(g.kind == mc.ModelInstanceGroup.KIND_GPU for g in gpu.instance_group)
    assert all(g.kind == mc.ModelInstanceGroup.KIND_CPU for g in cpu.instance_group)
    # Without "no", Triton copies GPU inputs to the host before execute(): DLPack would gain nothing.
    assert gpu_params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no"
    assert gpu_params["tensor_library"] == "torch"
    # as_numpy() needs host memory: the NumPy profile must not take device tensors.
    assert cpu_params["FORCE_CPU_ONLY_INPUT_TENSORS"] == "yes"
    assert cpu_params["tensor_library"] == "numpy"
    assert (gpu_params["scorer_calls"], cpu_params["scorer_calls"]) == ("bls", "onnxruntime")
    assert {gpu_params["tensor_library"], cpu_params["tensor_library"]} <= set(LIBRARIES)
    assert set(gpu_params) == set(cpu_params), "the profiles must set the same parameters"
    differ = sorted(k for k in gpu_params if gpu_params[k] != cpu_params[k])
    assert differ == sorted(RANKER_PROFILE_PARAMETERS), f"parameters that differ between profiles: {differ}"
    # The whole config (tensors, instance counts, batching, every other parameter) is the same
    # once the kind and the profile parameters are set to the CPU profile's.
    for group in gpu.instance_group:
        group.kind = mc.ModelInstanceGroup.KIND_CPU
    for key in RANKER_PROFILE_PARAMETERS:
        gpu.parameters[key].string_value = cpu_params[key]
    assert text_format.MessageToString(gpu) == text_format.MessageToString(cpu)


# --- ensemble wiring ---------------------------------------------------------------------------


def test_ensemble_wiring():
    cfg = load_config(REPO / ENSEMBLE / "config.pbtxt")
    assert cfg.platform == "ensemble"
    sig = MODELS[ENSEMBLE]
    # ensemble tensor name -> its signature spec, as declared or produced so far
    available: dict[str, TensorSpec] = {s.name: s for s in sig.inputs}
    steps = list(cfg.ensemble_scheduling.step)
    assert steps, "ensemble has no steps"
    for step in steps:
        assert (REPO / step.model_name / "config.pbtxt").is_file(), f"step model {step.model_name} has no folder"
        inner: ModelSignature = MODELS[step.model_name]
        assert set(step.input_map) <= set(inner.input_names), f"{step.model_name}: unknown inputs"
        required = {s.name for s in inner.inputs if not s.optional}
        assert required <= set(step.input_map), f"{step.model_name}: unmapped required inputs"
        for key, value in step.input_map.items():
            assert value in available, (
                f"{step.model_name} input '{key}' <- '{value}' is neither an ensemble "
                "input nor an earlier step's output"
            )
            spec = inner.input(key)
            assert available[value].dtype == spec.dtype, f"{step.model_name} input '{key}' dtype"
            assert available[value].optional == spec.optional, f"{step.model_name} input '{key}' optional"
        assert set(step.output_map) <= set(inner.output_names), f"{step.model_name}: unknown outputs"
        for key, value in step.output_map.items():
            assert value not in available, f"ensemble tensor '{value}' is produced twice"
            available[value] = inner.output(key)
    for spec in sig.outputs:
        assert spec.name in available, f"ensemble output '{spec.name}' is never produced"
        assert available[spec.name].dtype == spec.dtype
    produced = {v for s in steps for v in s.output_map.values()}
    consumed = {v for s in steps for v in s.input_map.values()} | {o.name for o in sig.outputs}
    assert produced <= consumed, f"unused step outputs {sorted(produced - consumed)}"


# --- ONNX graphs ----------------------------------------------------------------------------------


def _onnx_dims(value: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param if d.HasField("dim_param") else d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def onnx_graphs() -> dict[str, onnx.GraphProto]:
    return {name: onnx.load(str(_onnx_path(name)), load_external_data=False).graph for name in ENGINE_MODELS}


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
@pytest.mark.parametrize("profile", ["config.pbtxt", "configs/cpu.pbtxt"], ids=["gpu", "cpu"])
def test_onnx_matches_config(name: str, profile: str, onnx_graphs: dict[str, onnx.GraphProto]):
    cfg = load_config(REPO / name / profile)
    graph, sig = onnx_graphs[name], ENGINE_MODELS[name]
    fixed_sizes: dict[str, int] = {}  # E and D: free in the signature, fixed per exported model
    for kind, values, specs in (("input", graph.input, sig.inputs), ("output", graph.output, sig.outputs)):
        initializers = {i.name for i in graph.initializer}
        values = [v for v in values if v.name not in initializers]
        assert [v.name for v in values] == [s.name for s in specs], f"ONNX {kind} names (in signature order)"
        tensors = _tensors(cfg, kind)
        for value, spec in zip(values, specs):
            t = tensors[value.name]
            elem = value.type.tensor_type.elem_type
            assert onnx.helper.tensor_dtype_to_np_dtype(elem) == np.dtype(spec.numpy_dtype), f"'{spec.name}' dtype"
            assert mc.DataType.Name(t.data_type) == CONFIG_DTYPE[spec.dtype]
            dims = _onnx_dims(value)
            cfg_dims = ([-1] if sig.batched else []) + list(t.dims)  # the batch dim is implicit in the config
            assert len(dims) == len(cfg_dims) == len(spec.dims), f"'{spec.name}' rank"
            for axis, (d_onnx, d_cfg, d_sig) in enumerate(zip(dims, cfg_dims, spec.dims)):
                where = f"{kind} '{spec.name}' axis {axis}: ONNX {dims}, config {list(t.dims)}"
                if d_cfg != -1:
                    assert d_onnx == d_cfg, where
                if isinstance(d_sig, str) and d_sig in DIM_LIMITS:
                    assert d_onnx == d_sig, f"{where}: symbol {d_sig} must be dynamic (dim_param '{d_sig}')"
                elif isinstance(d_sig, str):
                    assert isinstance(d_onnx, int) and d_onnx > 0, f"{where}: {d_sig} must be a fixed size"
                    assert fixed_sizes.setdefault(d_sig, d_onnx) == d_onnx, f"{where}: {d_sig} disagrees"


def test_onnx_sizes_agree_across_models(onnx_graphs: dict[str, onnx.GraphProto]):
    """E and D are fixed per export and must be the same number in every graph."""
    seen: dict[str, set[int]] = {}
    for name, graph in onnx_graphs.items():
        sig = ENGINE_MODELS[name]
        for value in list(graph.input) + list(graph.output):
            spec = next((s for s in sig.inputs + sig.outputs if s.name == value.name), None)
            if spec is None:
                continue
            for d_sig, d_onnx in zip(spec.dims, _onnx_dims(value)):
                if d_sig in ("E", "D"):
                    seen.setdefault(d_sig, set()).add(d_onnx)
    assert set(seen) == {"E", "D"} and all(len(v) == 1 for v in seen.values()), seen


AUTO_NAME = re.compile(r"^(onnx::|input\.|output\.|/)|^\d+$|\.\d+$")


@pytest.mark.parametrize("name", sorted(ENGINE_MODELS), ids=str)
def test_onnx_names_not_auto_generated(name: str, onnx_graphs: dict[str, onnx.GraphProto]):
    graph = onnx_graphs[name]
    names = [v.name for v in list(graph.input) + list(graph.output)]
    assert names, f"{name} graph has no inputs/outputs"
    bad = [n for n in names if AUTO_NAME.search(n)]
    assert not bad, f"{name}: auto-generated tensor names {bad}"
