package wire_test

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/wire"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// TestCallSendsDeadlineAndTraceContext checks what Call puts on the wire
// for a service to read (the caller's deadline, W3C trace context under its
// lower-case names) and the CLIENT span it reports, from the global
// provider as the Go client uses it.
func TestCallSendsDeadlineAndTraceContext(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp)))
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	got := make(chan nats.Header, 1)
	if _, err := nc.Subscribe("t.kv.get", func(m *nats.Msg) {
		got <- m.Header
		data, _ := proto.Marshal(&pb.GetResponse{Found: true})
		_ = m.Respond(data)
	}); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	resp := &pb.GetResponse{}
	if err := wire.Call(ctx, nc, "t.kv.get", nil, &pb.GetRequest{Key: "k"}, resp); err != nil || !resp.Found {
		t.Fatalf("Call = %v, %v; want found", resp, err)
	}
	hdr := <-got
	if ms, err := strconv.Atoi(hdr.Get(wire.HeaderTimeout)); err != nil || ms <= 0 || ms > 3000 {
		t.Errorf("%s = %q; want the remaining milliseconds", wire.HeaderTimeout, hdr.Get(wire.HeaderTimeout))
	}
	if _, ok := hdr["traceparent"]; !ok {
		t.Errorf("no traceparent under its exact name: %v", hdr)
	}
	spans := exp.GetSpans()
	if len(spans) != 1 {
		t.Fatalf("%d spans; want 1", len(spans))
	}
	s := spans[0]
	if s.Name != "send t.kv.get" || s.SpanKind != trace.SpanKindClient {
		t.Errorf("span %q kind %v; want \"send t.kv.get\" CLIENT", s.Name, s.SpanKind)
	}
	for _, a := range s.Attributes {
		if a.Key == wire.AttrStatusCode && a.Value.AsInt64() != 200 {
			t.Errorf("%s = %v; want 200", a.Key, a.Value.AsInt64())
		}
	}
}

// TestCallErrors checks that an error reply comes back as the *apierr.Error
// it carries and a subject nobody serves as ErrUnavailable.
func TestCallErrors(t *testing.T) {
	srv := natstest.Server(t)
	nc := natstest.Connect(t, srv.ClientURL())
	if _, err := nc.Subscribe("t.kv.put", func(m *nats.Msg) {
		out := nats.NewMsg(m.Reply)
		out.Header.Set(apierr.HeaderCode, "409")
		out.Header.Set(apierr.HeaderMessage, "revision 3 is not 2")
		out.Data, _ = proto.Marshal(&pb.Error{Code: 409, Reason: string(apierr.ReasonRevisionMismatch), Message: "revision 3 is not 2"})
		_ = m.RespondMsg(out)
	}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	err := wire.Call(ctx, nc, "t.kv.put", nil, &pb.PutRequest{Key: "k"}, &pb.PutResponse{})
	var e *apierr.Error
	if !errors.As(err, &e) || e.Code() != 409 || !errors.Is(err, apierr.ReasonRevisionMismatch) {
		t.Errorf("error reply = %v; want a 409 revision_mismatch", err)
	}
	err = wire.Call(ctx, nc, "t.nobody", nil, &pb.GetRequest{Key: "k"}, &pb.GetResponse{})
	if !errors.Is(err, apierr.ErrUnavailable) {
		t.Errorf("no responders = %v; want ErrUnavailable", err)
	}
}
