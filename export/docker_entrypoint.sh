#!/bin/sh
# Docker entrypoint, run by NVIDIA's /opt/nvidia/nvidia_entrypoint.sh (the image's ENTRYPOINT):
# check the GPU, the driver and the TensorRT versions, mirror the read-only model repository into
# the cache volume, build the engines there when missing or stale, then start Triton on that copy
# with hardened flags (no model control, admin APIs behind a key). Extra arguments go to tritonserver.
# docs/image.md explains each step.
set -eu
SOURCE="${MODEL_REPOSITORY:-/opt/ranking/model_repository}"
CACHE="${ENGINE_CACHE:-/var/cache/ranking}"
python3 -m export.tensorrt_build --model-repository "$SOURCE" --cache "$CACHE"
if [ -z "${TRITON_ADMIN_KEY:-}" ]; then
  echo "TRITON_ADMIN_KEY is not set: admin APIs are unreachable" >&2
  TRITON_ADMIN_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
RESTRICTED="model-repository,shared-memory,logging,trace:admin-key=${TRITON_ADMIN_KEY}"
exec tritonserver \
  --model-repository="$CACHE/model_repository" \
  --model-control-mode=none \
  --strict-readiness=true \
  --exit-on-error=true \
  --http-restricted-api="$RESTRICTED" \
  --grpc-restricted-protocol="$RESTRICTED" \
  "$@"
