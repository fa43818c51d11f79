// Package telemetry gives every latchkey process the same tracing and
// metrics: W3C trace context carried in NATS headers, spans named by the
// OpenTelemetry messaging conventions, an OTLP exporter configured from the
// standard OTEL_* environment, and Prometheus RED metrics.
package telemetry

import (
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/propagation"
)

// HeaderCarrier carries trace context in NATS headers under the exact
// lower-case names of the W3C spec (traceparent, tracestate). It exists
// because nats.Header is case-sensitive and http.Header would rewrite
// "traceparent" to "Traceparent", which other NATS clients do not read.
type HeaderCarrier nats.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the first value of key, matched exactly.
func (c HeaderCarrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set stores value under key exactly as given.
func (c HeaderCarrier) Set(key, value string) { c[key] = []string{value} }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
