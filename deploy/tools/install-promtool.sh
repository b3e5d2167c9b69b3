#!/usr/bin/env bash
# Put promtool into a project-local folder from Debian's `prometheus` package, without installing
# the package (which would also register a Prometheus service): `apt-get download` the .deb and
# take usr/bin/promtool out of it. Idempotent: an existing binary is kept.
#   usage: deploy/tools/install-promtool.sh [DEST_DIR]   (default: build/tools)
set -euo pipefail
DEST="$(realpath -m "${1:-build/tools}")"
PROMTOOL="$DEST/promtool"

if [[ -x "$PROMTOOL" ]] && "$PROMTOOL" --version >/dev/null 2>&1; then
  exit 0
fi
command -v apt-get >/dev/null || { echo "install-promtool: apt-get is needed (Debian's prometheus package)" >&2; exit 1; }
mkdir -p "$DEST"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
chmod 0755 "$tmp"  # apt's _apt user writes the download here
# A fresh machine has no package lists yet: update once, then retry.
(cd "$tmp" && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; })
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
install -m 0755 "$tmp/x/usr/bin/promtool" "$PROMTOOL"
"$PROMTOOL" --version | head -1
