# Adaptive ranking on Triton, production profile: TensorRT FP8 engines on the GPU.
# Build after `make fp8 PRESET=small` (the FP8 QDQ ONNX graphs in model_repository/):
#   docker build -t adaptive-ranking .
#   docker run --gpus all --shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \
#     -e TRITON_ADMIN_KEY=change-me adaptive-ranking
# Engines are built for the local GPU on first start (export/tensorrt_build.py).
FROM nvcr.io/nvidia/tritonserver:25.08-py3

# TensorRT Python bindings matching the image's TensorRT, cuda-python for the engine check, the
# CPU-side packages the build step imports (ONNX Runtime for the comparison), and torch for the
# ranker's GPU profile (tensor_library "torch": DLPack tensors stay on the GPU between the engines).
# torch is pinned like everywhere else in the project; here pip takes its CUDA build.
RUN pip install --no-cache-dir \
      tensorrt-cu12==10.11.0.33 \
      cuda-python==12.9.0 \
      onnx==1.22.0 \
      onnxruntime==1.31.1 \
      numpy==1.26.4 \
      torch==2.13.0

RUN useradd --create-home --uid 1000 triton
WORKDIR /opt/ranking
# The serving package, the repository, and only the export modules the engine build needs.
COPY --chown=triton:triton serving/ serving/
COPY --chown=triton:triton model_repository/ model_repository/
COPY --chown=triton:triton export/__init__.py export/tensorrt_build.py export/profiles.py export/samples.py \
     export/docker_entrypoint.sh export/
USER 1000:1000

EXPOSE 8000 8001 8002
ENTRYPOINT ["/opt/ranking/export/docker_entrypoint.sh"]
