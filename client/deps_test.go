package client_test

import (
	"bytes"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// allowedDeps are the only non-standard packages the client's (non-test)
// packages may link: what an application adding the client gets. A pattern
// ending in "/..." is a package and everything under it; any other is one
// package. The server side (gRPC and OTLP exporters, Prometheus, the OTel
// SDK, JetStream, micro, nats-server) must stay out: it lives in
// kit/service and kit/telemetry, which the client does not import.
var allowedDeps = []string{
	// The client itself.
	"github.com/latchkey/latchkey/client/...",
	// Call, replies, codec, deadline header, trace context: the wire layer
	// split from the service runtime for this test's sake.
	"github.com/latchkey/latchkey/kit/wire",
	// The error type and codes every reply maps to.
	"github.com/latchkey/latchkey/kit/apierr",
	// Subject names of the public endpoints.
	"github.com/latchkey/latchkey/kit/subjects",
	// The protobuf contract.
	"github.com/latchkey/latchkey/proto/...",

	// nats.go's core client and its own internals; not jetstream or micro,
	// which are the services' side.
	"github.com/nats-io/nats.go",
	"github.com/nats-io/nats.go/encoders/...",
	"github.com/nats-io/nats.go/internal/...",
	"github.com/nats-io/nats.go/util",
	// What nats.go brings: nkeys (auth) with x/crypto and x/sys, nuid
	// (inbox names), klauspost/compress (websocket compression).
	"github.com/nats-io/nkeys",
	"github.com/nats-io/nuid",
	"github.com/klauspost/compress/...",
	"golang.org/x/crypto/...",
	"golang.org/x/sys/...",

	// Message encoding.
	"google.golang.org/protobuf/...",

	// The OpenTelemetry API: spans and W3C propagation, so a caller's
	// trace continues through latchkey. Not otel/sdk or otel/exporters.
	"go.opentelemetry.io/otel",
	"go.opentelemetry.io/otel/attribute/...",
	"go.opentelemetry.io/otel/baggage/...",
	"go.opentelemetry.io/otel/codes/...",
	"go.opentelemetry.io/otel/propagation/...",
	"go.opentelemetry.io/otel/semconv/...",
	"go.opentelemetry.io/otel/trace/...",
	// The API's own internals (the global providers and error handler);
	// the global delegates serve every signal, so they link the metric
	// and log APIs as well.
	"go.opentelemetry.io/otel/internal/...",
	"go.opentelemetry.io/otel/metric/...",
	"go.opentelemetry.io/otel/log/...",
	// What the OTel API brings: auto/sdk (the hook for zero-code
	// instrumentation in otel/trace), logr and stdr (otel's internal
	// logger), xxhash (hashing attribute sets).
	"go.opentelemetry.io/auto/sdk/...",
	"github.com/go-logr/logr/...",
	"github.com/go-logr/stdr",
	"github.com/cespare/xxhash/v2",
}

func allowed(pkg string) bool {
	return slices.ContainsFunc(allowedDeps, func(p string) bool {
		if root, ok := strings.CutSuffix(p, "/..."); ok {
			return pkg == root || strings.HasPrefix(pkg, root+"/")
		}
		return pkg == p
	})
}

// TestClientLinksNoServerSide fails when a package of the client module
// (tests aside: an example may start real services) links a package
// outside allowedDeps, and names who imports it.
func TestClientLinksNoServerSide(t *testing.T) {
	// go test puts its own go first in PATH.
	cmd := exec.Command("go", "list", "-deps",
		"-f", "{{if not .Standard}}{{.ImportPath}} {{join .Imports \" \"}}{{end}}",
		"github.com/latchkey/latchkey/client/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	importers := map[string][]string{}
	var deps []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		deps = append(deps, f[0])
		for _, imp := range f[1:] {
			importers[imp] = append(importers[imp], f[0])
		}
	}
	if !slices.Contains(deps, "github.com/latchkey/latchkey/client") {
		t.Fatalf("go list did not list the client itself:\n%s", out)
	}
	for _, d := range deps {
		if !allowed(d) {
			t.Errorf("the client links %s (imported by %s)", d, strings.Join(importers[d], ", "))
		}
	}
	t.Logf("%d non-standard packages, all allowed", len(deps))
}
