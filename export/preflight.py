"""Before any engine is built: is there a usable GPU, one GPU model, and one TensorRT version everywhere?

    python3 -m export.preflight --versions-only   # Dockerfile, at build time (no GPU there)
    python3 -m export.tensorrt_build ...           # calls check_gpus() and check_tensorrt() at every start

Each failure is one line saying what is wrong and what to do, instead of a traceback from deep
inside cuda-python or a plan that Triton cannot load:
- no NVIDIA driver in the container (started without ``--gpus``), a driver too old for the image's
  CUDA, no visible device;
- GPUs of different models: the plans are built on GPU 0, and the un-pinned KIND_GPU instance
  groups load the same plan on every visible GPU;
- the TensorRT Python bindings, the libnvinfer that Triton's tensorrt backend loads and the
  version table (export/image_versions.py) disagree: a plan loads only in the TensorRT that built it.

The CUDA and libnvinfer calls sit behind two small seams (``CudaBindings``, ``load_libnvinfer``);
everything else is plain Python, unit-tested in tests/test_preflight.py.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol

from export.image_versions import base_image

BINDINGS_DIST = "tensorrt-cu13-bindings"  # requirements-image.txt
# Triton's tensorrt backend has RUNPATH $ORIGIN (tensorrt_backend CMakeLists.txt), then the linker path.
BACKEND_DIR = Path("/opt/tritonserver/backends/tensorrt")
LIBNVINFER = "libnvinfer.so.10"


class PreflightError(RuntimeError):
    """The container cannot build or serve the engines; the message says why and what to do."""


class CudaError(RuntimeError):
    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name}: {text}")
        self.name = name


class Cuda(Protocol):
    """The CUDA runtime calls the preflight needs (versions are 1000 * major + 10 * minor)."""

    def driver_version(self) -> int: ...  # 0 when no driver is mounted into the container
    def runtime_version(self) -> int: ...
    def device_count(self) -> int: ...
    def device(self, index: int) -> tuple[str, int, int]: ...  # name, compute capability major, minor


class CudaBindings:
    """The real seam: cuda.bindings.runtime (cuda-bindings 13), whose calls return (error, value)."""

    def __init__(self) -> None:
        from cuda.bindings import runtime

        self._rt = runtime

    def _value(self, result: tuple) -> object:
        err, value = result
        if err != self._rt.cudaError_t.cudaSuccess:
            raise CudaError(err.name, self._rt.cudaGetErrorString(err)[1].decode())
        return value

    def driver_version(self) -> int:
        return int(self._value(self._rt.cudaDriverGetVersion()))

    def runtime_version(self) -> int:
        return int(self._value(self._rt.cudaRuntimeGetVersion()))

    def device_count(self) -> int:
        return int(self._value(self._rt.cudaGetDeviceCount()))

    def device(self, index: int) -> tuple[str, int, int]:
        props = self._value(self._rt.cudaGetDeviceProperties(index))
        return props.name.decode(), int(props.major), int(props.minor)


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    major: int
    minor: int

    @property
    def key(self) -> str:
        """What a plan is specific to, as written in its stamp: the GPU model and its compute capability."""
        return f"{self.name} sm_{self.major}{self.minor}"


def _cuda(version: int) -> str:
    return f"{version // 1000}.{version % 1000 // 10}"


DRIVER_TOO_OLD = {
    "cudaErrorInsufficientDriver",
    "cudaErrorCallRequiresNewerDriver",
    "cudaErrorSystemDriverMismatch",
    "cudaErrorCompatNotSupportedOnDevice",
}
NO_DEVICE = {"cudaErrorNoDevice", "cudaErrorInvalidDevice", "cudaErrorDevicesUnavailable"}


def explain(error: CudaError, driver: int, runtime: int) -> str:
    """One line for a CUDA error at device discovery, from the error and the driver / runtime versions."""
    if error.name == "cudaErrorInsufficientDriver" and driver == 0:
        return (
            "no NVIDIA driver in the container: start it with --gpus all (NVIDIA Container Toolkit), "
            "or on Kubernetes request nvidia.com/gpu"
        )
    if error.name in DRIVER_TOO_OLD:
        return (
            f"the NVIDIA driver is too old: it supports CUDA {_cuda(driver)}, this image needs CUDA {_cuda(runtime)} "
            f"({error.name}); install a driver for CUDA {_cuda(runtime)} (see the image's release notes)"
        )
    if error.name in NO_DEVICE:
        return (
            f"no usable GPU is visible ({error.name}): check --gpus, NVIDIA_VISIBLE_DEVICES and "
            "CUDA_VISIBLE_DEVICES, and that no other process holds the GPU in exclusive mode"
        )
    return f"CUDA error at device discovery: {error}"


def visible_gpus(cuda: Cuda) -> list[Gpu]:
    """Every GPU the container sees, or PreflightError saying why there is none."""
    try:
        driver, runtime = cuda.driver_version(), cuda.runtime_version()
    except CudaError as e:
        raise PreflightError(f"CUDA runtime unusable: {e}") from None
    try:
        gpus = [Gpu(i, *cuda.device(i)) for i in range(cuda.device_count())]
    except CudaError as e:
        raise PreflightError(explain(e, driver, runtime)) from None
    if not gpus:
        raise PreflightError("no usable GPU is visible (0 devices): check --gpus and NVIDIA_VISIBLE_DEVICES")
    return gpus


def one_gpu_model(gpus: list[Gpu]) -> Gpu:
    """GPU 0 when every visible GPU is the same model; refuses a mixed node (the plans are built once)."""
    if len({g.key for g in gpus}) > 1:
        seen = ", ".join(f"{g.index}: {g.key}" for g in gpus)
        raise PreflightError(
            f"GPUs of different models are visible ({seen}): the plans are built on GPU 0 and Triton loads "
            "them on every visible GPU; start one container per GPU model, e.g. --gpus '\"device=0\"' or "
            "NVIDIA_VISIBLE_DEVICES=<the GPUs of one model>"
        )
    return gpus[0]


def check_gpus(cuda: Cuda) -> Gpu:
    """The GPU the plans are built for (GPU 0, the same model as every other visible GPU)."""
    return one_gpu_model(visible_gpus(cuda))


@dataclass(frozen=True)
class Libnvinfer:
    version: str  # major.minor.patch.build
    path: str


def load_libnvinfer(backend_dir: Path = BACKEND_DIR) -> Libnvinfer:
    """The libnvinfer Triton's tensorrt backend would load, loaded here first.

    Loading it before the Python bindings makes the bindings use this very library (the dynamic
    linker reuses an already loaded soname), so the plans are built by what Triton runs them with.
    """
    local = backend_dir / LIBNVINFER
    path = str(local) if local.exists() else LIBNVINFER
    try:
        lib = ctypes.CDLL(path)
    except OSError as e:
        raise PreflightError(f"cannot load {path} (the TensorRT library Triton's tensorrt backend uses): {e}") from None
    parts = [getattr(lib, f"getInferLib{p}Version")() for p in ("Major", "Minor", "Patch", "Build")]
    return Libnvinfer(".".join(map(str, parts)), path)


def bindings_version() -> str:
    """The installed TensorRT Python bindings' version, from the package metadata (nothing is loaded)."""
    try:
        return metadata.version(BINDINGS_DIST)
    except metadata.PackageNotFoundError:
        raise PreflightError(f"{BINDINGS_DIST} is not installed (requirements-image.txt)") from None


def check_tensorrt(tag: str, bindings: str, loaded: Libnvinfer | None) -> str:
    """The one TensorRT version of this image, or PreflightError naming the two that differ.

    ``loaded`` is None when libnvinfer could not be loaded (only allowed at image build time)."""
    row = base_image(tag).tensorrt
    if loaded is not None and bindings != loaded.version:
        raise PreflightError(
            f"the TensorRT Python bindings are {bindings} but Triton's tensorrt backend loads libnvinfer "
            f"{loaded.version} ({loaded.path}): plans built here would not load in Triton; pin "
            f"{BINDINGS_DIST}=={loaded.version} in requirements-image.txt and correct export/image_versions.py"
        )
    if loaded is not None and loaded.version != row.value:
        raise PreflightError(
            f"tritonserver:{tag} has libnvinfer {loaded.version} ({loaded.path}), but export/image_versions.py says "
            f"{row.value}{' (an inference)' if row.inferred else ''}: correct the table and requirements-image.txt"
        )
    if bindings != row.value:
        raise PreflightError(
            f"{BINDINGS_DIST} is {bindings} but export/image_versions.py gives tritonserver:{tag} TensorRT "
            f"{row.value}: requirements-image.txt and the table disagree"
        )
    return bindings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-tag", default=os.environ.get("RANKING_BASE_TAG", ""), help="the FROM tag")
    parser.add_argument("--versions-only", action="store_true", help="TensorRT versions only: no GPU needed")
    args = parser.parse_args()
    try:
        try:
            loaded: Libnvinfer | None = load_libnvinfer()
        except PreflightError as e:
            if not args.versions_only:
                raise
            # At image build time a missing driver library may keep libnvinfer from loading; every
            # start checks it again (export/tensorrt_build.py) and refuses there.
            print(f"warning: {e}; the bindings are checked against the table only", file=sys.stderr)
            loaded = None
        version = check_tensorrt(args.base_tag, bindings_version(), loaded)
        print(f"TensorRT {version} ({loaded.path if loaded else 'libnvinfer not loaded'})")
        if not args.versions_only:
            print(f"GPU {check_gpus(CudaBindings()).key}")
    except (PreflightError, ValueError) as e:
        raise SystemExit(f"preflight: {e}") from None


if __name__ == "__main__":
    main()
