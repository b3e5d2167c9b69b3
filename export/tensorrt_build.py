"""Build the TensorRT engines (strongly typed, from the FP32 / FP8 QDQ ONNX) and check them against ONNX Runtime.

    python3 -m export.tensorrt_build --model-repository /opt/ranking/model_repository --cache /var/cache/ranking

Run by the Docker image at every start (export/docker_entrypoint.sh), before tritonserver:
1. preflight (export/preflight.py): a usable GPU, one GPU model, and the same TensorRT in the
   Python bindings, in the libnvinfer Triton loads and in export/image_versions.py;
2. mirror the read-only ``--model-repository`` into ``<cache>/model_repository`` (export/runtime_repo.py),
   which Triton then serves;
3. build the missing or stale plans there, with a timing cache per GPU and TensorRT (export/engine_cache.py).

Thin on purpose: shapes, file names and which engines to build come from export/profiles.py and
export/engine_cache.py (unit-tested without TensorRT). Only ``TensorRTEngines`` and ``run_engine``
call TensorRT and cuda-python, which exist only in the Docker image: NOT run on the development
machines (no GPU, no TensorRT there).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from types import ModuleType

import numpy as np

from export.engine_cache import attach_timing_cache, build_stale, locked_cache
from export.preflight import CudaBindings, PreflightError, check_gpus, check_tensorrt, load_libnvinfer
from export.profiles import OPT_SIZES, fixed_dims, profile
from export.runtime_repo import mirror
from export.samples import random_inputs
from serving.contract import ENGINE_MODELS
from serving.onnx_session import make_session

log = logging.getLogger("export.tensorrt_build")
RTOL, ATOL = 0.05, 0.02  # GPU FP8 / FP16 kernels vs ONNX Runtime's CPU arithmetic on the same graph


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


class TensorRTEngines:
    """export/engine_cache.py's ``Engines`` seam, on TensorRT: build one plan, check it against ONNX Runtime."""

    def __init__(self, trt: ModuleType) -> None:
        self.trt = trt

    def build(self, onnx_path: Path, timing_cache: bytes) -> tuple[bytes, bytes]:
        trt = self.trt
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        attach_timing_cache(config, timing_cache)
        sig = ENGINE_MODELS[onnx_path.parent.parent.name]
        opt_profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in profile(sig, fixed_dims(onnx_path, sig)).items():
            opt_profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(opt_profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
        return bytes(plan), bytes(config.get_timing_cache().serialize())

    def check(self, onnx_path: Path, plan_path: Path) -> float:
        """Max abs difference of the engine against ONNX Runtime on the same random inputs at OPT_SIZES."""
        sig = ENGINE_MODELS[onnx_path.parent.parent.name]
        inputs = random_inputs(sig, {**OPT_SIZES, **fixed_dims(onnx_path, sig)}, np.random.default_rng(0))
        expected = dict(zip(sig.output_names, make_session(onnx_path).run(sig.output_names, inputs)))
        got = run_engine(self.trt, plan_path, inputs)
        worst = 0.0
        for name, ref in expected.items():
            np.testing.assert_allclose(got[name], ref, rtol=RTOL, atol=ATOL, err_msg=f"{plan_path} output {name}")
            worst = max(worst, float(np.abs(got[name] - ref).max()))
        return worst


def import_tensorrt() -> ModuleType:
    """The TensorRT Python bindings: ``tensorrt_bindings`` (requirements-image.txt), or a full ``tensorrt``."""
    try:
        import tensorrt_bindings as trt
    except ImportError:
        import tensorrt as trt
    return trt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-repository", type=Path, required=True, help="the image's (read-only) repository")
    parser.add_argument("--cache", type=Path, required=True, help="writable: runtime repository, plans, timing caches")
    parser.add_argument("--base-tag", default=os.environ.get("RANKING_BASE_TAG", ""), help="the Dockerfile's FROM tag")
    parser.add_argument("--force", action="store_true", help="rebuild every engine")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        with locked_cache(args.cache) as cache:
            loaded = load_libnvinfer()  # first, so the bindings use this very library
            trt = import_tensorrt()
            version = check_tensorrt(args.base_tag, trt.__version__, loaded)
            gpu = check_gpus(CudaBindings())
            runtime = cache / "model_repository"
            mirror(args.model_repository, runtime)
            built = build_stale(runtime, gpu.key, version, cache, TensorRTEngines(trt), args.force)
    except (PreflightError, ValueError, FileNotFoundError, RuntimeError) as e:
        raise SystemExit(f"engine build: {e}") from None
    log.info("%s ready for %s, TensorRT %s (%d built)", runtime, gpu.key, version, len(built))


if __name__ == "__main__":
    main()
