#!/usr/bin/env bash
# Builds the images of deploy/compose/compose.offline.yaml without pulling
# anything: every binary is built (or found) on this machine, static where
# possible, and copied into a FROM scratch image (deploy/docker/Dockerfile.scratch).
#
#   latchkey/router:dev latchkey/storage:dev latchkey/locker:dev   always
#   latchkey/nats:dev        nats-server built from its Go module, cached
#   latchkey/jaeger:dev      only if a Jaeger binary is cached (see below)
#   latchkey/prometheus:dev  only if Debian's prometheus is installed
#
# The Jaeger binary is the one the observability tests build and cache in
# $cache/bin/jaeger (building it takes ~7 min; this script never does).
# Go's build cache makes a rebuild after a code change take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# The tree the services are built from (default: this one). Set it to a
# clean checkout to build images while the working tree is mid-change.
src=${LATCHKEY_BUILD_SRC:-$root}

NATS_VERSION=v2.15.2
TAG=${LATCHKEY_IMAGE_TAG:-dev}
cache="${XDG_CACHE_HOME:-$HOME/.cache}/latchkey"
mkdir -p "$cache/bin"
export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:--buildvcs=false}"
# Docker 20.10 here has no buildx; the classic builder handles these files.
export DOCKER_BUILDKIT=0

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image NAME BINARY [DATA_DIR] [LIB...]: a scratch image running BINARY as
# nobody, with an empty DATA_DIR it owns, plus the given shared libraries.
image() {
	local name=$1 bin=$2 data=${3:-/data}
	shift 3 || shift $#
	local ctx="$work/$name"
	mkdir -p "$ctx/rootfs" "$ctx/data"
	cp "$bin" "$ctx/rootfs/entrypoint"
	if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
		mkdir -p "$ctx/rootfs/etc/ssl/certs"
		cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
	fi
	for lib in "$@"; do
		mkdir -p "$ctx/rootfs$(dirname "$lib")"
		cp -L "$lib" "$ctx/rootfs$lib"
	done
	# The classic builder's deprecation notice is noise; show its output on failure only.
	if ! docker build -q -f "$root/deploy/docker/Dockerfile.scratch" --build-arg DATA_DIR="$data" \
		--label org.latchkey.offline=1 -t "latchkey/$name:$TAG" "$ctx" >"$ctx.log" 2>&1; then
		cat "$ctx.log" >&2
		return 1
	fi
	echo "built latchkey/$name:$TAG ($(du -hL "$bin" | cut -f1) binary)"
}

# ldd fails on a static binary ("not a dynamic executable").
static() { ! ldd "$1" >/dev/null 2>&1; }

for svc in router storage locker; do
	(cd "$src/services/$svc" && go build -trimpath -ldflags='-s -w' -o "$work/latchkey-$svc" "./cmd/latchkey-$svc")
	image "$svc" "$work/latchkey-$svc"
done

nats="$cache/bin/nats-server-$NATS_VERSION"
if [ ! -x "$nats" ]; then
	echo "building nats-server $NATS_VERSION from its Go module (first run only, ~2 min)"
	GOBIN="$work/gobin" GOWORK=off go install -trimpath -ldflags='-s -w' "github.com/nats-io/nats-server/v2@$NATS_VERSION"
	mv "$work/gobin/nats-server" "$nats"
fi
image nats "$nats"

jaeger="${LATCHKEY_JAEGER_BIN:-$cache/bin/jaeger}"
if [ -x "$jaeger" ] && static "$jaeger"; then
	image jaeger "$jaeger"
else
	echo "skipped latchkey/jaeger:$TAG: no static Jaeger binary at $jaeger"
fi

prom=$(command -v prometheus || true)
if [ -n "$prom" ]; then
	if static "$prom"; then
		image prometheus "$prom" /prometheus
	else
		# Debian's build links libc only; ship the loader and libc with it.
		# Go resolves names itself without /etc/nsswitch.conf, so no NSS modules.
		mapfile -t libs < <(ldd "$prom" | grep -o '/[^ ]*\.so[^ ]*' | sort -u)
		image prometheus "$prom" /prometheus "${libs[@]}"
	fi
else
	echo "skipped latchkey/prometheus:$TAG: no prometheus on PATH (apt-get install prometheus)"
fi

# Earlier builds of these tags are now untagged; drop them (ours only).
docker image prune -f --filter label=org.latchkey.offline=1 >/dev/null
