// Package telemetry gives every latchkey process the same tracing and
// metrics: W3C trace context carried in NATS headers, spans named by the
// OpenTelemetry messaging conventions, an OTLP exporter configured from the
// standard OTEL_* environment, and Prometheus RED metrics.
//
// What a caller needs of it (the header carrier, the CLIENT span, End) is
// in kit/wire, which the Go client links without the exporters; the names
// here stay for the services.
package telemetry

import "github.com/latchkey/latchkey/kit/wire"

// HeaderCarrier carries trace context in NATS headers under the exact
// lower-case names of the W3C spec (see wire.HeaderCarrier).
type HeaderCarrier = wire.HeaderCarrier
