"""What the Triton base image contains, each figure with its source: image tag -> Triton, TensorRT, CUDA, Python.

    .venv/bin/python -m pytest -q tests/test_image.py   # the Dockerfile's FROM tag and the pins against this table

The Dockerfile's FROM tag picks the row. requirements-image.txt pins the TensorRT Python bindings to
the row's TensorRT and the resolver check (export/image_resolve.py) targets its Python and glibc.
The image checks the row against the libnvinfer it really has at build time and at every start
(export/preflight.py), so a wrong row stops the build or the start with both versions named.

Nobody could pull or run the image on the machines this table was written on: every value is read
from NVIDIA's release notes or sources, and ``inferred`` marks those no NVIDIA page states for this
image. Verify one in the image with the command in ``check``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BASE_REPOSITORY = "nvcr.io/nvidia/tritonserver"


@dataclass(frozen=True)
class Sourced:
    """One version and where it comes from."""

    value: str
    source: str
    inferred: bool = False  # True: deduced from other facts, no NVIDIA statement for this image
    check: str = ""  # how to confirm it inside the image


@dataclass(frozen=True)
class BaseImage:
    """One NGC Triton image (nvcr.io/nvidia/tritonserver:<tag>)."""

    tag: str
    triton: Sourced
    tensorrt: Sourced
    cuda: Sourced
    python: Sourced
    glibc: Sourced  # the newest manylinux tag its wheels may carry
    user: tuple[str, int, int]  # the non-root user the image already has: name, UID, GID
    user_source: str


BASE_IMAGES = {
    "25.08-py3": BaseImage(
        tag="25.08-py3",
        triton=Sourced(
            "2.60.0",
            "triton-inference-server/server build.py at v2.60.0: DEFAULT_TRITON_VERSION_MAP "
            '"release_version": "2.60.0", "triton_container_version": "25.08"',
        ),
        tensorrt=Sourced(
            "10.13.2.6",
            "inferred: 25.08 is built on CUDA 13.0.0 and TensorRT 10.13.2 (GA 2025-08-18) is the first TensorRT "
            "with CUDA 13.0 support (NVIDIA/TensorRT v10.13.2 release notes, PR #4556); the first tensorrt-cu13 "
            'wheel on PyPI is 10.13.2.6; TensorRT-LLM docker/common/install_tensorrt.sh pins TRT_VER="10.13.2.6" '
            'with CUDA_VER="13.0" "aligned with" the NGC 25.08 release notes. 10.11.0.33 is the TensorRT of the '
            "25.08-trtllm-python-py3 variant (server docs/introduction/compatibility.md), not of 25.08-py3.",
            inferred=True,
            check='python3 -c "import ctypes; l = ctypes.CDLL(\'libnvinfer.so.10\'); '
            "print(l.getInferLibMajorVersion(), l.getInferLibMinorVersion(), l.getInferLibPatchVersion(), "
            'l.getInferLibBuildVersion())"',
        ),
        cuda=Sourced(
            "13.0.0.044",
            "Triton release notes rel-25-08: 'Release 25.08 is based on CUDA 13.0.0.044'",
        ),
        python=Sourced(
            "3.12.3",
            'server build.py at v2.60.0: "rhel_py_version": "3.12.3"; docs/introduction/compatibility.md lists '
            "Python 3.12.3 for the 25.06-25.10 images; Ubuntu 24.04 base (ubuntu:24.04 in build.py)",
            check="python3 --version",
        ),
        glibc=Sourced("2.39", "Ubuntu 24.04 (noble) ships glibc 2.39", check="ldd --version"),
        user=("triton-server", 1000, 1000),
        user_source="server build.py at v2.60.0 creates TRITON_SERVER_USER=triton-server and asserts "
        "`id -u` and `id -g` are 1000",
    ),
}


def base_image(tag: str) -> BaseImage:
    """The row for ``tag``; an unknown tag is an error naming the known ones."""
    if tag not in BASE_IMAGES:
        raise ValueError(
            f"no version table entry for tritonserver:{tag} (known: {', '.join(sorted(BASE_IMAGES))}): "
            "add one to export/image_versions.py with the source of each version"
        )
    return BASE_IMAGES[tag]


def dockerfile_base_tag(dockerfile: Path) -> str:
    """The tritonserver tag of the Dockerfile's FROM line, with ``${ARG}`` defaults declared before it filled in."""
    args: dict[str, str] = {}
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words[:1] == ["ARG"] and "=" in words[1]:
            name, value = words[1].split("=", 1)
            args[name] = value
        elif words[:1] == ["FROM"]:
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[1])
            if not image.startswith(f"{BASE_REPOSITORY}:") or "$" in image:
                raise ValueError(f"{dockerfile}: FROM {words[1]} is not {BASE_REPOSITORY}:<tag> with a known tag")
            return image.split(":", 1)[1]
    raise ValueError(f"{dockerfile} has no FROM line")
