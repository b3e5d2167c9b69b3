# Adaptive ranking on Triton, production profile: TensorRT FP8 engines on the GPU.
# Build after `make fp8 PRESET=small` (the FP8 QDQ ONNX graphs in model_repository/):
#   docker build -t adaptive-ranking .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -v ranking-engines:/var/cache/ranking -e TRITON_ADMIN_KEY=change-me adaptive-ranking
# At every start the engines are built for the local GPU when missing or stale, in the cache volume;
# the model repository in the image stays read-only. docs/image.md: the steps, the checks, the sources.
#
# The tag picks the versions in export/image_versions.py; requirements-image.txt is pinned to that
# row (tests/test_image.py): another tag needs both updated.
ARG BASE_TAG=25.08-py3
FROM nvcr.io/nvidia/tritonserver:${BASE_TAG}
ARG BASE_TAG

# No bytecode written at run time: a __pycache__ the engine build or a stub left in a repository
# would be taken for a model. pip installs as root into the system Python the Python backend's stub
# embeds (the base image sets PIP_BREAK_SYSTEM_PACKAGES too).
ENV RANKING_BASE_TAG=${BASE_TAG} \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MODEL_REPOSITORY=/opt/ranking/model_repository \
    ENGINE_CACHE=/var/cache/ranking

# TensorRT bindings for the image's own libnvinfer, cuda-bindings, ONNX / ONNX Runtime for the engine
# check, torch (CUDA 13 build) for the ranker's GPU profile: pinned, resolved together by
# `make image-check` for this image's Python and platform.
COPY requirements-image.txt /tmp/ranking/
RUN pip install --no-cache-dir -r /tmp/ranking/requirements-image.txt

# The project is installed, not found through the working directory: the stubs and the engine build
# import `serving` and `export` wherever they run (docker run -w, a Kubernetes workingDir).
# Only the export modules the engine build needs. Then the TensorRT versions are checked once here
# (no GPU at build time), and again at every start.
COPY pyproject.toml /tmp/ranking/
COPY serving/ /tmp/ranking/serving/
COPY export/__init__.py export/tensorrt_build.py export/profiles.py export/samples.py export/engine_cache.py \
     export/preflight.py export/runtime_repo.py export/image_versions.py /tmp/ranking/export/
RUN pip install --no-cache-dir --no-deps /tmp/ranking \
 && rm -rf /tmp/ranking \
 && python3 -m export.preflight --versions-only

# Owned by root, so read-only for the server's user; Triton serves a symlinked copy in the cache.
COPY model_repository/ /opt/ranking/model_repository/
COPY --chmod=0755 export/docker_entrypoint.sh /opt/ranking/docker_entrypoint.sh

# Plans, stamps, timing caches and the runtime repository. A new named volume takes this directory's
# owner, the base image's triton-server user (UID/GID 1000; it exists already, no useradd).
RUN mkdir -p /var/cache/ranking && chown 1000:1000 /var/cache/ranking
VOLUME ["/var/cache/ranking"]
USER 1000:1000

EXPOSE 8000 8001 8002
# NVIDIA's entrypoint first: its entrypoint.d parts set the container's environment (banner,
# TRITON_SERVER_CPU_ONLY when NVIDIA_CPU_ONLY=1), then it execs ours.
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "/opt/ranking/docker_entrypoint.sh"]
