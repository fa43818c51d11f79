#!/usr/bin/env bash
# Builds Jaeger (all-in-one, v2) from its Go module into the user cache, once.
# The observability tests run it to check traces end to end. No image registry
# is reachable here, so the binary comes from source: ~7 min and ~2.4 GB on
# 2 cores the first time, then it is reused. It lives outside the repository
# clone so fresh clones (CI) and dev checkouts share it.
# Prints the binary's path on its last line.
set -euo pipefail
version="${JAEGER_VERSION:-v1.76.0}" # Go module v1.76.0 = Jaeger v2.13
cache="${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/bin"
out="$cache/jaeger-$version"
if [ -x "$out" ]; then echo "$out"; exit 0; fi
mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building jaeger $version (first run only, several minutes)" >&2
(
  cd "$work"
  export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
  go mod init x >/dev/null 2>&1
  go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$version" >&2
  go build -trimpath -ldflags='-s -w' -o "$out.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
)
mv "$out.tmp" "$out"
ln -sf "$(basename "$out")" "$cache/jaeger"
echo "$out"
