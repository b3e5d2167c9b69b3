"""The start-up refusals of the image (export/preflight.py), with the CUDA runtime replaced at its seam.

The fake answers as cuda.bindings.runtime does on a real machine: the no-driver case is what it
returned on this GPU-less machine (cudaDriverGetVersion 0, then cudaErrorInsufficientDriver)."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.image_versions import base_image
from export.preflight import CudaError, Gpu, Libnvinfer, PreflightError, check_gpus, check_tensorrt, load_libnvinfer

TAG = "25.08-py3"
TRT = base_image(TAG).tensorrt.value
H100 = ("NVIDIA H100 80GB HBM3", 9, 0)
L4 = ("NVIDIA L4", 8, 9)


class FakeCuda:
    """cuda.bindings.runtime behind the seam: versions, then devices or the error discovery fails with."""

    def __init__(self, driver: int, devices: list[tuple[str, int, int]], error: str | None = None) -> None:
        self.driver, self.devices, self.error = driver, devices, error

    def driver_version(self) -> int:
        return self.driver

    def runtime_version(self) -> int:
        return 13000

    def device_count(self) -> int:
        if self.error:
            raise CudaError(self.error, "as the runtime says it")
        return len(self.devices)

    def device(self, index: int) -> tuple[str, int, int]:
        return self.devices[index]


@pytest.mark.parametrize(
    ("cuda", "message"),
    [
        (FakeCuda(0, [], "cudaErrorInsufficientDriver"), "no NVIDIA driver in the container: start it with --gpus all"),
        (FakeCuda(12040, [], "cudaErrorInsufficientDriver"), "driver is too old: it supports CUDA 12.4, this image "
         "needs CUDA 13.0"),
        (FakeCuda(12080, [], "cudaErrorCompatNotSupportedOnDevice"), "too old: it supports CUDA 12.8"),
        (FakeCuda(13000, [], "cudaErrorNoDevice"), r"no usable GPU is visible \(cudaErrorNoDevice\)"),
        (FakeCuda(13000, []), r"no usable GPU is visible \(0 devices\)"),
        (FakeCuda(13000, [], "cudaErrorUnknown"), "CUDA error at device discovery: cudaErrorUnknown"),
    ],
    ids=["no-driver", "driver-12.4", "no-forward-compat", "no-device", "zero-devices", "other"],
)
def test_no_usable_gpu_is_one_clear_line(cuda: FakeCuda, message: str):
    with pytest.raises(PreflightError, match=message):
        check_gpus(cuda)


def test_driver_version_call_failing_is_named():
    class Broken(FakeCuda):
        def driver_version(self) -> int:
            raise CudaError("cudaErrorStubLibrary", "CUDA driver is a stub library")

    with pytest.raises(PreflightError, match="CUDA runtime unusable: cudaErrorStubLibrary"):
        check_gpus(Broken(0, []))


def test_gpus_of_one_model_build_on_gpu_0():
    gpu = check_gpus(FakeCuda(13000, [H100, H100]))
    assert gpu == Gpu(0, *H100) and gpu.key == "NVIDIA H100 80GB HBM3 sm_90"


def test_mixed_gpus_are_refused_naming_each():
    with pytest.raises(PreflightError, match=r"different models .*0: NVIDIA H100 80GB HBM3 sm_90, 1: NVIDIA L4 sm_89"):
        check_gpus(FakeCuda(13000, [H100, L4]))


def test_same_name_other_compute_capability_is_another_model():
    with pytest.raises(PreflightError, match="different models"):
        check_gpus(FakeCuda(13000, [("GPU", 9, 0), ("GPU", 8, 0)]))


LIB = "/usr/lib/x86_64-linux-gnu/libnvinfer.so.10"


def test_one_tensorrt_everywhere_passes():
    assert check_tensorrt(TAG, TRT, Libnvinfer(TRT, LIB)) == TRT


@pytest.mark.parametrize(
    ("bindings", "loaded", "message"),
    [
        ("10.11.0.33", Libnvinfer(TRT, LIB), f"bindings are 10.11.0.33 but Triton's tensorrt backend loads "
         f"libnvinfer {TRT} \\({LIB}\\): plans built here would not load"),
        ("10.13.3.9", Libnvinfer("10.13.3.9", LIB), f"has libnvinfer 10.13.3.9 .*says {TRT} \\(an inference\\)"),
        ("10.11.0.33", None, f"tensorrt-cu13-bindings is 10.11.0.33 but .* TensorRT {TRT}"),
    ],
    ids=["bindings-vs-libnvinfer", "image-vs-table", "bindings-vs-table-at-build"],
)
def test_tensorrt_disagreement_names_both_versions(bindings: str, loaded: Libnvinfer | None, message: str):
    with pytest.raises(PreflightError, match=message):
        check_tensorrt(TAG, bindings, loaded)


def test_tensorrt_check_needs_a_known_tag():
    with pytest.raises(ValueError, match="no version table entry for tritonserver:"):
        check_tensorrt("", TRT, Libnvinfer(TRT, LIB))


def test_backend_dirs_libnvinfer_comes_first_and_a_bad_one_is_named(tmp_path: Path):
    """Triton's tensorrt backend has RUNPATH $ORIGIN: a libnvinfer beside it wins over the linker path."""
    (tmp_path / "libnvinfer.so.10").write_bytes(b"not an ELF file")
    with pytest.raises(PreflightError, match=f"cannot load {tmp_path}/libnvinfer.so.10 .*tensorrt backend"):
        load_libnvinfer(tmp_path)
