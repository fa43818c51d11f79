package telemetry_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

func useTracing(t *testing.T) *tracetest.InMemoryExporter {
	exp := tracetest.NewInMemoryExporter()
	prev := otel.GetTracerProvider()
	telemetry.Use(telemetry.NewTracing(exp, true), "caller")
	t.Cleanup(func() { telemetry.Use(nil, ""); otel.SetTracerProvider(prev) })
	return exp
}

func serviceName(s tracetest.SpanStub) string {
	v, _ := s.Resource.Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}

// TestSpansBelongToTheServiceOfTheirContext: in one process, each span is
// reported under the service its context names, and unnamed contexts use
// the default service.
func TestSpansBelongToTheServiceOfTheirContext(t *testing.T) {
	exp := useTracing(t)
	hdr := nats.Header{}
	_, client := telemetry.StartClient(context.Background(), "latchkey.kv.get", "get", hdr)
	sctx := telemetry.WithService(context.Background(), "latchkey-router")
	sctx, server := telemetry.StartServer(sctx, &nats.Msg{Subject: "latchkey.kv.get", Header: hdr}, "get")
	_, js := telemetry.StartJetStream(telemetry.WithService(sctx, "latchkey-storage"), telemetry.JSPublish, "KV_b")
	js.End()
	server.End()
	client.End()
	tests := []struct{ name, service string }{
		{"publish KV_b", "latchkey-storage"},
		{"process latchkey.kv.get", "latchkey-router"},
		{"send latchkey.kv.get", "caller"},
	}
	spans := exp.GetSpans()
	if len(spans) != len(tests) {
		t.Fatalf("%d spans", len(spans))
	}
	for i, tt := range tests {
		if spans[i].Name != tt.name || serviceName(spans[i]) != tt.service {
			t.Errorf("span %d: %q of %q, want %q of %q", i, spans[i].Name, serviceName(spans[i]), tt.name, tt.service)
		}
	}
	if spans[0].SpanKind != trace.SpanKindClient || spans[0].Parent.SpanID() != spans[1].SpanContext.SpanID() {
		t.Errorf("JetStream span: kind %v, parent %v", spans[0].SpanKind, spans[0].Parent.SpanID())
	}
}

func TestOutcome(t *testing.T) {
	for code, want := range map[int]string{200: "ok", 400: "invalid", 404: "not_found", 409: "conflict", 413: "too_large", 503: "unavailable", 500: "error"} {
		if got := telemetry.Outcome(code); got != want {
			t.Errorf("Outcome(%d) = %q, want %q", code, got, want)
		}
	}
}

// A process that runs several services gives each its own tracer
// provider, so a trace back end shows them as separate services.
func ExampleTracing() {
	exp := tracetest.NewInMemoryExporter()
	tr := telemetry.NewTracing(exp, true)
	telemetry.Use(tr, "my-app")
	defer telemetry.Use(nil, "")
	defer tr.Shutdown(context.Background())

	ctx := telemetry.WithService(context.Background(), "latchkey-storage")
	_, span := telemetry.StartJetStream(ctx, telemetry.JSGet, "KV_latchkey_shard_0")
	span.End()

	s := exp.GetSpans()[0]
	fmt.Println(s.Name, "of", serviceName(s))
	// Output: get KV_latchkey_shard_0 of latchkey-storage
}
