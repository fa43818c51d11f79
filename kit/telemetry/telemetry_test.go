package telemetry_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

func recordSpans(t *testing.T) *tracetest.InMemoryExporter {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	return exp
}

func TestHeaderNamesStayLowerCase(t *testing.T) {
	recordSpans(t)
	hdr := nats.Header{}
	_, span := telemetry.StartClient(context.Background(), "latchkey.kv.get", "get", hdr)
	span.End()
	if _, ok := hdr["traceparent"]; !ok {
		t.Fatalf("traceparent not written under its exact lower-case name: %v", hdr)
	}
	if _, ok := hdr["Traceparent"]; ok {
		t.Fatal("canonicalised header name written")
	}
}

func TestServerContinuesIncomingTrace(t *testing.T) {
	exp := recordSpans(t)
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	msg := &nats.Msg{Subject: "latchkey.kv.get", Header: nats.Header{"traceparent": {parent}}}
	_, span := telemetry.StartServer(context.Background(), msg, "get")
	telemetry.End(span, 200, nil)
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans", len(spans))
	}
	s := spans[0]
	if got := s.SpanContext.TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace id %s: the incoming trace was not continued", got)
	}
	if got := s.Parent.SpanID().String(); got != "00f067aa0ba902b7" {
		t.Errorf("parent %s", got)
	}
	if s.SpanKind != trace.SpanKindServer || s.Name != "process latchkey.kv.get" {
		t.Errorf("span %q kind %v", s.Name, s.SpanKind)
	}
}

func TestNoTraceContextStartsARoot(t *testing.T) {
	exp := recordSpans(t)
	_, span := telemetry.StartServer(context.Background(), &nats.Msg{Subject: "s"}, "get")
	span.End()
	if s := exp.GetSpans()[0]; s.Parent.IsValid() {
		t.Errorf("a request without context got parent %v", s.Parent)
	}
}

func TestClientServerLink(t *testing.T) {
	exp := recordSpans(t)
	hdr := nats.Header{}
	ctx, client := telemetry.StartClient(context.Background(), "s", "get", hdr)
	_, server := telemetry.StartServer(ctx, &nats.Msg{Subject: "s", Header: hdr}, "get")
	server.End()
	client.End()
	spans := exp.GetSpans()
	if spans[0].Parent.SpanID() != spans[1].SpanContext.SpanID() {
		t.Error("server span is not the child of the client span")
	}
}

func TestLogLinesCarryTraceIDs(t *testing.T) {
	recordSpans(t)
	var buf bytes.Buffer
	log := slog.New(telemetry.LogHandler(slog.NewTextHandler(&buf, nil)))
	ctx, span := telemetry.StartClient(context.Background(), "s", "get", nats.Header{})
	log.InfoContext(ctx, "hello")
	span.End()
	want := "trace_id=" + span.SpanContext().TraceID().String()
	if !strings.Contains(buf.String(), want) {
		t.Errorf("log line %q lacks %s", buf.String(), want)
	}
}
