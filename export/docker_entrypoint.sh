#!/bin/sh
# Docker entrypoint: build the TensorRT engines for this GPU when missing or stale, then start Triton
# with hardened flags (no model control, admin APIs behind a key). Extra arguments go to tritonserver.
set -eu
REPO="${MODEL_REPOSITORY:-/opt/ranking/model_repository}"
python3 -m export.tensorrt_build --model-repository "$REPO"
if [ -z "${TRITON_ADMIN_KEY:-}" ]; then
  echo "TRITON_ADMIN_KEY is not set: admin APIs are unreachable" >&2
  TRITON_ADMIN_KEY="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
fi
RESTRICTED="model-repository,shared-memory,logging,trace:admin-key=${TRITON_ADMIN_KEY}"
exec tritonserver \
  --model-repository="$REPO" \
  --model-control-mode=none \
  --strict-readiness=true \
  --exit-on-error=true \
  --http-restricted-api="$RESTRICTED" \
  --grpc-restricted-protocol="$RESTRICTED" \
  "$@"
