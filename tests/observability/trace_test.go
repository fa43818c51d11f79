package observability_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// memTracing records every span of the test in memory, one provider per
// service as `latchkey dev` has them.
func memTracing(t *testing.T) *tracetest.InMemoryExporter {
	exp := tracetest.NewInMemoryExporter()
	useTracing(t, telemetry.NewTracing(exp, true))
	return exp
}

func serviceOf(s tracetest.SpanStub) string {
	for _, kv := range s.Resource.Attributes() {
		if kv.Key == semconv.ServiceNameKey {
			return kv.Value.AsString()
		}
	}
	return ""
}

func attr(s tracetest.SpanStub, key attribute.Key) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if kv.Key == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// findAll returns the spans of service named name; it fails if there are none.
func findAll(t *testing.T, spans tracetest.SpanStubs, service, name string) []tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if serviceOf(s) == service && s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) == 0 {
		t.Fatalf("no span %q of %s; spans: %s", name, service, describeSpans(spans))
	}
	return found
}

// settled returns the exported spans once no new one has ended for 100 ms
// (at most 2 s): a service ends its span after it sent the reply, so the
// caller can hold the answer before the span is exported.
func settled(exp *tracetest.InMemoryExporter) tracetest.SpanStubs {
	deadline := time.Now().Add(2 * time.Second)
	spans := exp.GetSpans()
	for time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
		next := exp.GetSpans()
		if len(next) == len(spans) {
			return next
		}
		spans = next
	}
	return spans
}

// find returns the one span of service named name; it fails otherwise.
func find(t *testing.T, spans tracetest.SpanStubs, service, name string) tracetest.SpanStub {
	t.Helper()
	var found []tracetest.SpanStub
	for _, s := range spans {
		if serviceOf(s) == service && s.Name == name {
			found = append(found, s)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one span %q of %s, found %d; spans: %s", name, service, len(found), describeSpans(spans))
	}
	return found[0]
}

func describeSpans(spans tracetest.SpanStubs) string {
	var b strings.Builder
	for _, s := range spans {
		b.WriteString("\n  " + serviceOf(s) + ": " + s.Name + " " + s.SpanContext.SpanID().String() + " <- " + s.Parent.SpanID().String())
	}
	return b.String()
}

// checkTree fails unless all spans share one trace and every span's parent
// is in the set, except the root's, which must be root (or, when root is
// invalid, absent from the set).
func checkTree(t *testing.T, spans tracetest.SpanStubs, root trace.SpanContext) {
	t.Helper()
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext.SpanID()] = true
	}
	roots := 0
	for _, s := range spans {
		if s.SpanContext.TraceID() != spans[0].SpanContext.TraceID() {
			t.Fatalf("spans of two traces: %s", describeSpans(spans))
		}
		if !ids[s.Parent.SpanID()] {
			roots++
			if root.IsValid() && s.Parent.SpanID() != root.SpanID() {
				t.Errorf("span %q has parent %s, which is neither in the trace nor the caller's span", s.Name, s.Parent.SpanID())
			}
		}
	}
	if roots != 1 {
		t.Errorf("%d spans without a parent in the trace, want 1: %s", roots, describeSpans(spans))
	}
}

const secretKey = "customer:4711:e-mail"

// TestRequestWithoutContextStartsTraceAtRouter: a bare `nats req` (no
// traceparent) gets a trace rooted at the router, which reaches the shard
// and JetStream through the router's own client span; spans carry the
// shard, key length and revision, never the key.
func TestRequestWithoutContextStartsTraceAtRouter(t *testing.T) {
	exp := memTracing(t)
	d := startSuite(t)
	exp.Reset()
	reply, err := d.nc.Request("latchkey.kv.put", []byte(`{"key":"`+secretKey+`","value":"aGk="}`), 5*time.Second)
	if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "" {
		t.Fatalf("put: %v %v", err, reply.Header)
	}
	spans := settled(exp)
	router := find(t, spans, "latchkey-router", "process latchkey.kv.put")
	if router.Parent.IsValid() {
		t.Fatalf("router span has parent %v; a request without context must start a trace", router.Parent)
	}
	checkTree(t, spans, trace.SpanContext{})
	shardID, ok := attr(router, telemetry.AttrShard)
	if !ok {
		t.Fatalf("router span lacks %s", telemetry.AttrShard)
	}
	hop := find(t, spans, "latchkey-router", "send latchkey.shard."+shardID.AsString()+".put")
	if hop.Parent.SpanID() != router.SpanContext.SpanID() || hop.SpanKind != trace.SpanKindClient {
		t.Errorf("shard hop: parent %s kind %v", hop.Parent.SpanID(), hop.SpanKind)
	}
	shard := find(t, spans, "latchkey-storage", "process latchkey.shard."+shardID.AsString()+".put")
	if shard.Parent.SpanID() != hop.SpanContext.SpanID() {
		t.Errorf("shard span is not the child of the router's hop")
	}
	js := find(t, spans, "latchkey-storage", "publish KV_latchkey_shard_"+shardID.AsString())
	if js.Parent.SpanID() != shard.SpanContext.SpanID() || js.SpanKind != trace.SpanKindClient {
		t.Errorf("JetStream span: parent %s kind %v", js.Parent.SpanID(), js.SpanKind)
	}
	for _, s := range []tracetest.SpanStub{router, shard} {
		if v, _ := attr(s, telemetry.AttrKeyLength); v.AsInt64() != int64(len(secretKey)) {
			t.Errorf("%s: key length %v, want %d", s.Name, v.Emit(), len(secretKey))
		}
		if v, _ := attr(s, telemetry.AttrRevision); v.AsInt64() == 0 {
			t.Errorf("%s: no revision attribute", s.Name)
		}
		if v, _ := attr(s, telemetry.AttrStatusCode); v.AsInt64() != 200 {
			t.Errorf("%s: status code %v", s.Name, v.Emit())
		}
		if v, _ := attr(s, semconv.MessagingSystemKey); v.AsString() != "nats" {
			t.Errorf("%s: messaging.system %q", s.Name, v.Emit())
		}
	}
	for _, s := range spans {
		for _, kv := range s.Attributes {
			if strings.Contains(kv.Value.Emit(), "customer:4711") {
				t.Errorf("span %q attribute %s carries the key: %q", s.Name, kv.Key, kv.Value.Emit())
			}
		}
	}
}

// TestRequestWithTraceparentContinuesTrace: `nats req -H traceparent:...`
// continues the caller's trace.
func TestRequestWithTraceparentContinuesTrace(t *testing.T) {
	exp := memTracing(t)
	d := startSuite(t)
	exp.Reset()
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	msg := &nats.Msg{Subject: "latchkey.kv.get", Data: []byte(`{"key":"k"}`),
		Header: nats.Header{"traceparent": {"00-" + traceID + "-" + parentID + "-01"}}}
	if _, err := d.nc.RequestMsg(msg, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	spans := settled(exp)
	router := find(t, spans, "latchkey-router", "process latchkey.kv.get")
	if router.SpanContext.TraceID().String() != traceID || router.Parent.SpanID().String() != parentID {
		t.Fatalf("router span in trace %s under %s; want %s under %s",
			router.SpanContext.TraceID(), router.Parent.SpanID(), traceID, parentID)
	}
	tid, _ := trace.TraceIDFromHex(traceID)
	pid, _ := trace.SpanIDFromHex(parentID)
	checkTree(t, spans, trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: pid}))
	find(t, spans, "latchkey-storage", "get KV_latchkey_shard_"+attrString(t, router, telemetry.AttrShard))
}

func attrString(t *testing.T, s tracetest.SpanStub, k attribute.Key) string {
	t.Helper()
	v, ok := attr(s, k)
	if !ok {
		t.Fatalf("span %q lacks %s", s.Name, k)
	}
	return v.AsString()
}

// TestFencedWriteTraceSpansEveryService: a caller that acquires a lock
// and writes under its fence sees one trace through client, locker,
// router, storage and JetStream; a stale fence is recorded on the spans as
// a 409 outcome without marking them failed.
func TestFencedWriteTraceSpansEveryService(t *testing.T) {
	exp := memTracing(t)
	d := startSuite(t)
	c := client.New(d.nc)
	ctx := testCtx(t, 20*time.Second)
	exp.Reset()

	ctx, root := clientSpan(ctx, "fenced write")
	fencedWrite(t, ctx, c, "trace-lock", "trace-key")
	root.End()
	spans := settled(exp)
	checkTree(t, spans, trace.SpanContext{})
	services := map[string]bool{}
	for _, s := range spans {
		services[serviceOf(s)] = true
	}
	for _, want := range []string{"latchkey-client", "latchkey-router", "latchkey-storage", "latchkey-locker"} {
		if !services[want] {
			t.Errorf("no span of %s: %s", want, describeSpans(spans))
		}
	}
	acq := findAll(t, spans, "latchkey-locker", "process latchkey.lock.acquire")[0]
	if v := attrString(t, acq, telemetry.AttrLockName); v != "trace-lock" {
		t.Errorf("lock name attribute %q", v)
	}
	findAll(t, spans, "latchkey-locker", "publish KV_latchkey_locks")
	stale := 0
	for _, s := range spans {
		if s.Name != "process latchkey.kv.put" || serviceOf(s) != "latchkey-router" {
			continue
		}
		if v, _ := attr(s, telemetry.AttrFenced); !v.AsBool() {
			t.Errorf("fenced put span lacks %s", telemetry.AttrFenced)
		}
		if v, _ := attr(s, telemetry.AttrStatusCode); v.AsInt64() == 409 {
			stale++
			if o, _ := attr(s, telemetry.AttrOutcome); o.AsString() != "conflict" {
				t.Errorf("stale fence outcome %q", o.Emit())
			}
			if s.Status.Code.String() == "Error" {
				t.Errorf("a 409 marked the router span failed")
			}
			if len(s.Events) == 0 {
				t.Errorf("the stale fence error was not recorded on the span")
			}
		}
	}
	if stale != 1 {
		t.Errorf("%d router put spans with status 409, want 1 (the stale fence)", stale)
	}
}

// fencedWrite plays two holders of lock: the first takes and releases it,
// the second takes it and writes key under its fence, then the first
// writes with its old token and is refused (stale fence, 409).
func fencedWrite(t *testing.T, ctx context.Context, c *client.Client, lock, key string) {
	t.Helper()
	acquire := func() *client.Lock {
		l, err := c.Acquire(ctx, lock, client.WithLeaseTTL(5*time.Second), client.WithoutKeepAlive())
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	old := acquire()
	if err := old.Release(ctx); err != nil {
		t.Fatal(err)
	}
	cur := acquire()
	if _, err := c.Put(ctx, key, []byte("v"), client.WithFence(lock, cur.Token())); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, key, []byte("old"), client.WithFence(lock, old.Token())); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("put under the previous holder's token: %v, want a stale-fence conflict", err)
	}
	if err := cur.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
