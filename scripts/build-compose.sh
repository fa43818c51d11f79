#!/usr/bin/env bash
# Builds Docker Compose v2 (the `docker compose` plugin users type) from its
# Go module into the user cache, once, and links it as the docker CLI plugin
# (~/.docker/cli-plugins/docker-compose). Debian ships only Compose v1.29, a
# different program; no registry or release download is reachable here.
# `go install` refuses the module (it has exclude directives), so this builds
# a writable copy of it: ~7 min on 2 cores the first time (module downloads
# included; ~2 min from a warm module cache), then reused.
# Prints the binary's path on its last line.
set -euo pipefail
version="${COMPOSE_VERSION:-v2.40.3}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/bin"
out="$cache/docker-compose-$version"
plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
mkdir -p "$cache" "$plugins"
if [ ! -x "$out" ]; then
  work=$(mktemp -d)
  trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
  echo "building docker compose $version (first run only, a few minutes)" >&2
  export GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0
  dir=$(cd "$work" && go mod download -json "github.com/docker/compose/v2@$version" | jq -r .Dir)
  cp -r "$dir" "$work/src"
  chmod -R u+w "$work/src"
  (cd "$work/src" && go build -trimpath \
    -ldflags="-s -w -X github.com/docker/compose/v2/internal.Version=$version" \
    -o "$out.tmp" ./cmd) >&2
  mv "$out.tmp" "$out"
fi
ln -sf "$out" "$plugins/docker-compose"
echo "$out"
