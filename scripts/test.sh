#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). It checks formatting,
# vets every module, lints the protobuf contract and fails when the generated
# Go code is stale, then runs every test (fuzz seeds included) of every module.
# Tools it needs (buf, protoc-gen-go) are installed into .cache/bin on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export GOFLAGS="${GOFLAGS:--buildvcs=false}"
export CGO_ENABLED=0
bin="$root/.cache/bin"
mkdir -p "$bin"
export PATH="$bin:$PATH"

step() { printf '\n==> %s\n' "$*"; }

step "tools"
[ -x "$bin/protoc-gen-go" ] || GOBIN="$bin" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
[ -x "$bin/buf" ] || { echo "installing buf (first run only, a few minutes)"; GOBIN="$bin" go install github.com/bufbuild/buf/cmd/buf@v1.75.0; }

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

step "go test"
go test -count=1 -timeout 20m $pkgs
