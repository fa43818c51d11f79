#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). It checks formatting,
# vets every module, lints the protobuf contract and fails when the generated
# Go code is stale, then runs every test (fuzz seeds included) of every module.
# Tools it needs (buf, protoc-gen-go) are installed on first use into a cache
# outside the clone (${XDG_CACHE_HOME:-~/.cache}/latchkey/bin), one folder per
# pinned version, so fresh clones on the same machine reuse them.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0
buf_version=v1.75.0
protoc_gen_go_version=v1.36.12
bin="${XDG_CACHE_HOME:-$HOME/.cache}/latchkey/bin/buf-$buf_version-pgg-$protoc_gen_go_version"
mkdir -p "$bin"
export PATH="$bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "tools"
[ -x "$bin/protoc-gen-go" ] || GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$protoc_gen_go_version"
[ -x "$bin/buf" ] || { echo "installing buf $buf_version (first run only, a few minutes)"; GOBIN="$bin" go install "github.com/bufbuild/buf/cmd/buf@$buf_version"; }

step "gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' | grep -v '\.pb\.go$') || true)
if [ -n "$unformatted" ]; then echo "not gofmt-ed:"; echo "$unformatted"; exit 1; fi

step "proto: buf lint and generated code up to date"
(cd proto && buf lint)
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
cp -r proto/. "$gen"
(cd "$gen" && buf generate)
if ! diff -r -q proto/latchkey "$gen/latchkey" >/dev/null; then
  diff -r proto/latchkey "$gen/latchkey" | head -40
  echo "generated code is stale: run 'cd proto && buf generate' and commit"; exit 1
fi

modules=$(go list -m -f '{{.Dir}}' | sed "s#^$root/##")
pkgs=$(for m in $modules; do echo "./$m/..."; done)

step "go vet"
go vet $pkgs

# Tests that race the NATS server's own timers (TTL expiry passes,
# elections) or run a whole deployment (processes, Docker) run one package
# at a time after the rest, so they do not compete for the two cores with
# each other; everything else runs two packages at a time.
serial="./kit/jskv ./services/storage ./services/locker ./check/inproc ./check/procs ./tests/deploy"
step "go test"
rest=$(go list $pkgs | grep -vxF -f <(go list $serial))
go test -count=1 -timeout 20m $rest
step "go test (timing-sensitive, one package at a time)"
go test -count=1 -timeout 20m -p 1 $serial
