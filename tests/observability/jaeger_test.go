package observability_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/telemetry"
)

// jaegerConfig is a Jaeger v2 configuration for a test: memory storage,
// OTLP/gRPC in, the query API, every listener on loopback ports chosen by
// the test and no internal metrics port (the default one, 8888, would clash
// with anything else running here).
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: %[1]s
    grpc:
      endpoint: %[2]s
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: %[3]s
      http:
        endpoint: %[4]s
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// jaegerTrace is the part of Jaeger's /api/traces/<id> answer we check.
type jaegerTrace struct {
	TraceID string `json:"traceID"`
	Spans   []struct {
		TraceID       string `json:"traceID"`
		SpanID        string `json:"spanID"`
		OperationName string `json:"operationName"`
		ProcessID     string `json:"processID"`
		References    []struct {
			RefType string `json:"refType"`
			TraceID string `json:"traceID"`
			SpanID  string `json:"spanID"`
		} `json:"references"`
	} `json:"spans"`
	Processes map[string]struct {
		ServiceName string `json:"serviceName"`
	} `json:"processes"`
}

// TestFencedWriteTraceInJaeger runs a real Jaeger, exports the suite's
// spans to it over OTLP the way `latchkey dev --otlp` does, drives a
// fenced write (acquire, fenced put, a stale-fence put, release) under one
// caller span, and reads the trace back from Jaeger's query API: one trace
// with spans from the client, router, storage and locker services, and
// every span's parent present in it except the root's.
func TestFencedWriteTraceInJaeger(t *testing.T) {
	jaeger := needBinary(t, "jaeger", "build it once with scripts/build-jaeger.sh (several minutes), or set LATCHKEY_JAEGER_BIN",
		os.Getenv("LATCHKEY_JAEGER_BIN"), filepath.Join(cacheBin(), "jaeger"))
	dir := t.TempDir()
	query, queryGRPC := loopback(freePort(t)), loopback(freePort(t))
	otlpGRPC, otlpHTTP := loopback(freePort(t)), loopback(freePort(t))
	cfg := filepath.Join(dir, "jaeger.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(jaegerConfig, query, queryGRPC, otlpGRPC, otlpHTTP)), 0o644); err != nil {
		t.Fatal(err)
	}
	runProcess(t, dir, jaeger, "--config", cfg)
	waitHTTP(t, "http://"+query+"/api/services", 60*time.Second)
	d := startSuite(t)

	// The two forms `latchkey dev --otlp` accepts.
	for _, tt := range []struct{ name, addr string }{
		{"OTLP gRPC", otlpGRPC},
		{"OTLP HTTP", "http://" + otlpHTTP},
	} {
		t.Run(tt.name, func(t *testing.T) { checkJaegerTrace(t, d, "http://"+query, tt.addr) })
	}
}

func checkJaegerTrace(t *testing.T, d *deployment, query, otlp string) {
	ctx := testCtx(t, 60*time.Second)
	shutdown, err := telemetry.SetupServices(ctx, "latchkey-client", otlp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = shutdown(context.Background()); tracingOff() })

	c := client.New(d.nc)
	wctx, root := clientSpan(ctx, "fenced write")
	fencedWrite(t, wctx, c, "jaeger-lock", "jaeger-key")
	root.End()
	if err := shutdown(ctx); err != nil { // flushes every service's spans
		t.Fatalf("exporting to Jaeger: %v", err)
	}
	traceID := root.SpanContext().TraceID().String()

	want := []string{"latchkey-client", "latchkey-locker", "latchkey-router", "latchkey-storage"}
	var (
		tr       jaegerTrace
		services []string
	)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		tr, err = fetchTrace(ctx, query+"/api/traces/"+traceID)
		services = nil
		for _, p := range tr.Processes {
			if !slices.Contains(services, p.ServiceName) {
				services = append(services, p.ServiceName)
			}
		}
		slices.Sort(services)
		if err == nil && slices.Equal(services, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s in Jaeger: services %v, want %v (%v)", traceID, services, want, err)
		}
	}

	ids := map[string]bool{}
	for _, s := range tr.Spans {
		ids[s.SpanID] = true
	}
	var roots []string
	ops := map[string][]string{}
	for _, s := range tr.Spans {
		if s.TraceID != traceID {
			t.Errorf("span %s (%s) is in trace %s", s.SpanID, s.OperationName, s.TraceID)
		}
		svc := tr.Processes[s.ProcessID].ServiceName
		ops[svc] = append(ops[svc], s.OperationName)
		parent := ""
		for _, r := range s.References {
			if r.RefType == "CHILD_OF" {
				parent = r.SpanID
			}
		}
		switch {
		case parent == "":
			roots = append(roots, s.OperationName)
		case !ids[parent]:
			t.Errorf("span %q of %s has parent %s, which is not in the trace", s.OperationName, svc, parent)
		}
	}
	if len(roots) != 1 || roots[0] != "fenced write" {
		t.Errorf("roots %q, want only the caller's span", roots)
	}
	for svc, op := range map[string]string{
		"latchkey-client":  "send latchkey.kv.put",
		"latchkey-router":  "process latchkey.kv.put",
		"latchkey-storage": "publish KV_latchkey_shard_",
		"latchkey-locker":  "publish KV_latchkey_locks",
	} {
		if !slices.ContainsFunc(ops[svc], func(o string) bool { return strings.HasPrefix(o, op) }) {
			t.Errorf("no %q span of %s; it has %q", op, svc, ops[svc])
		}
	}
	t.Logf("trace %s: %d spans, services %v", traceID, len(tr.Spans), services)
}

func fetchTrace(ctx context.Context, url string) (jaegerTrace, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return jaegerTrace{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return jaegerTrace{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return jaegerTrace{}, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	var body struct {
		Data []jaegerTrace `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return jaegerTrace{}, err
	}
	if len(body.Data) != 1 {
		return jaegerTrace{}, fmt.Errorf("GET %s: %d traces", url, len(body.Data))
	}
	return body.Data[0], nil
}
