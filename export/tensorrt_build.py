"""Build the TensorRT engines (strongly typed, from the FP32 / FP8 QDQ ONNX) and check them against ONNX Runtime.

    python -m export.tensorrt_build --model-repository model_repository   # in the Docker image, on the GPU

Thin on purpose: shapes, file names and which engines to build come from export/profiles.py
(unit-tested without TensorRT). Needs ``tensorrt`` and ``cuda-python`` (cuda.bindings), which exist
only in the Docker image; NOT run on the development machines (no GPU, no TensorRT there).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from export.profiles import (
    ONNX_FILE,
    OPT_SIZES,
    PLAN_FILE,
    STAMP_FILE,
    TIMING_CACHE,
    engines_to_build,
    fixed_dims,
    profile,
    stamp,
)
from export.samples import random_inputs
from serving.contract import ENGINE_MODELS
from serving.onnx_session import make_session

log = logging.getLogger("export.tensorrt_build")
RTOL, ATOL = 0.05, 0.02  # GPU FP8 / FP16 kernels vs ONNX Runtime's CPU arithmetic on the same graph


def build_engine(trt, onnx_path: Path, plan_path: Path, cache_path: Path) -> None:  # noqa: ANN001 (module)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    sig = ENGINE_MODELS[plan_path.parent.parent.name]
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile(sig, fixed_dims(onnx_path, sig)).items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {plan_path}")
    plan_path.write_bytes(bytes(plan))
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))


def run_engine(trt, plan_path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # noqa: ANN001
    """One inference of a plan on ``inputs`` (host arrays in, host arrays out) through cuda-python."""
    from cuda.bindings import runtime as cudart

    def check(result: tuple) -> object:
        if result[0] != cudart.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA error {result[0]}")
        return result[1] if len(result) > 1 else None

    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(plan_path.read_bytes())
    context = engine.create_execution_context()
    buffers: dict[str, int] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, array in inputs.items():
        context.set_input_shape(name, array.shape)
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        dtype = trt.nptype(engine.get_tensor_dtype(name))
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
            host = np.ascontiguousarray(inputs[name].astype(dtype))
        else:
            host = np.empty(tuple(context.get_tensor_shape(name)), dtype=dtype)
            outputs[name] = host
        ptr = check(cudart.cudaMalloc(max(host.nbytes, 1)))
        buffers[name] = ptr
        if name in inputs:
            check(cudart.cudaMemcpy(ptr, host.ctypes.data, host.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice))
        context.set_tensor_address(name, ptr)
    if not context.execute_async_v3(0):
        raise RuntimeError(f"TensorRT execution of {plan_path} failed")
    check(cudart.cudaDeviceSynchronize())
    for name, host in outputs.items():
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpy(host.ctypes.data, buffers[name], host.nbytes, kind))
    for ptr in buffers.values():
        check(cudart.cudaFree(ptr))
    return outputs


def compare_with_onnxruntime(trt, onnx_path: Path, plan_path: Path) -> float:  # noqa: ANN001
    """Max abs difference of the engine against ONNX Runtime on the same random inputs at OPT_SIZES."""
    sig = ENGINE_MODELS[plan_path.parent.parent.name]
    inputs = random_inputs(sig, {**OPT_SIZES, **fixed_dims(onnx_path, sig)}, np.random.default_rng(0))
    expected = dict(zip(sig.output_names, make_session(onnx_path).run(sig.output_names, inputs)))
    got = run_engine(trt, plan_path, inputs)
    worst = 0.0
    for name, ref in expected.items():
        np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=ATOL, err_msg=f"{plan_path} output {name}")
        worst = max(worst, float(np.abs(got[name] - ref).max()))
    return worst


def main() -> None:
    import tensorrt as trt
    from cuda.bindings import runtime as cudart

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True)
    parser.add_argument("--force", action="store_true", help="rebuild every engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    props = cudart.cudaGetDeviceProperties(0)[1]
    device = f"{props.name.decode()} sm_{props.major}{props.minor}"
    cache = args.model_repository / TIMING_CACHE
    for name in engines_to_build(args.model_repository, device, trt.__version__, args.force):
        version = args.model_repository / name / "1"
        log.info("building %s for %s (TensorRT %s)", name, device, trt.__version__)
        build_engine(trt, version / ONNX_FILE, version / PLAN_FILE, cache)
        diff = compare_with_onnxruntime(trt, version / ONNX_FILE, version / PLAN_FILE)
        log.info("%s: engine vs ONNX Runtime max abs diff %.3g", name, diff)
        (version / STAMP_FILE).write_text(json.dumps(stamp(version / ONNX_FILE, device, trt.__version__)))


if __name__ == "__main__":
    main()
