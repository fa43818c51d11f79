package observability_test

import (
	"context"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/telemetry"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

// BenchmarkTracingCost measures what tracing adds to a request's whole
// path (client -> router -> shard -> JetStream put, five spans) in one
// run: tracing off (no exporter configured: non-recording spans, context
// still propagated) against tracing on (the SDK recording every span and
// batching it to an exporter that drops it). Both modes alternate in
// chunks so that drift of the machine hits both alike. It reports
// off-ns/op, on-ns/op and their ratio on/off.
//
//	go test ./tests/observability -run '^$' -bench TracingCost -benchtime 5000x
func BenchmarkTracingCost(b *testing.B) {
	d := startSuite(b)
	c := client.New(d.nc)
	ctx := context.Background()
	on := telemetry.NewTracing(tracetest.NewNoopExporter(), false)
	b.Cleanup(func() { _ = on.Shutdown(context.Background()); tracingOff() })

	put := func(n int) time.Duration {
		start := time.Now()
		for range n {
			if _, err := c.Put(ctx, "bench:tracing", []byte("value")); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	tracingOff()
	put(100) // warm up both paths
	telemetry.Use(on, "latchkey-client")
	put(100)

	const chunk = 100
	var off, traced time.Duration
	b.ResetTimer()
	for done := 0; done < b.N; done += chunk {
		n := min(chunk, b.N-done)
		tracingOff()
		off += put(n)
		telemetry.Use(on, "latchkey-client")
		traced += put(n)
	}
	b.StopTimer()
	offNs := float64(off.Nanoseconds()) / float64(b.N)
	onNs := float64(traced.Nanoseconds()) / float64(b.N)
	b.ReportMetric(offNs, "off-ns/op")
	b.ReportMetric(onNs, "on-ns/op")
	b.ReportMetric(onNs/offNs, "on/off")
}
