package wire

import (
	"context"
	"errors"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// Instrumentation is the tracer name of every latchkey span.
const Instrumentation = "github.com/latchkey/latchkey"

// Span attributes End sets: the API status code of the outcome and its name
// (Outcome), so a trace can be searched by either.
const (
	AttrOutcome    = attribute.Key("latchkey.outcome")
	AttrStatusCode = attribute.Key("latchkey.status_code")
)

// propagator is used explicitly rather than through otel's global one, so
// trace context travels even in a program that never set a global
// propagator (the default global one propagates nothing).
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Propagator returns the propagator latchkey writes and reads NATS headers
// with: W3C trace context and baggage.
func Propagator() propagation.TextMapPropagator { return propagator }

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

// Tracer returns latchkey's tracer from the global provider.
func Tracer() trace.Tracer { return otel.Tracer(Instrumentation) }

var natsSystem = semconv.MessagingSystemKey.String("nats")

// StartClient starts, with tr, the span of a request sent on subject:
// "send <subject>", kind CLIENT, and writes its context into hdr so that
// the receiver's span becomes its child.
func StartClient(ctx context.Context, tr trace.Tracer, subject, operation string, hdr nats.Header) (context.Context, trace.Span) {
	ctx, span := tr.Start(ctx, "send "+subject,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(natsSystem,
			semconv.MessagingDestinationName(subject),
			semconv.MessagingOperationName(operation),
			semconv.MessagingOperationTypeSend))
	Inject(ctx, hdr)
	return ctx, span
}

// Inject writes ctx's trace context into hdr.
func Inject(ctx context.Context, hdr nats.Header) { propagator.Inject(ctx, HeaderCarrier(hdr)) }

// Extract returns ctx with the trace context hdr carries, if any.
func Extract(ctx context.Context, hdr nats.Header) context.Context {
	if hdr == nil {
		return ctx
	}
	return propagator.Extract(ctx, HeaderCarrier(hdr))
}

// End ends span, recording err (if any) as the span's status. code is the
// API status code of the outcome (0 to leave it out).
func End(span trace.Span, code int, err error) {
	if code != 0 {
		span.SetAttributes(AttrStatusCode.Int(code), AttrOutcome.String(Outcome(code)))
	}
	if err != nil && !errors.Is(err, context.Canceled) {
		span.RecordError(err)
		if code == 0 || code >= 500 {
			span.SetStatus(codes.Error, err.Error())
		} else {
			// A 4xx is the caller's problem, not a failure of this span's
			// work; the error stays visible as an event and attribute.
			span.SetAttributes(attribute.String("error.type", err.Error()))
		}
	}
	span.End()
}

// Outcome names an API status code for metric labels and span attributes
// (apierr.Outcome, the one table).
func Outcome(code int) string { return apierr.Outcome(code) }
