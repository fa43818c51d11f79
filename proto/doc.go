// Package proto holds latchkey's protobuf contract. The generated Go code is
// in latchkey/v1; regenerate it with `go generate ./...` from this directory.
package proto

//go:generate go run github.com/bufbuild/buf/cmd/buf@v1.75.0 generate
