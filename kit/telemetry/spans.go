package telemetry

import (
	"context"

	"github.com/latchkey/latchkey/kit/wire"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// Span attributes latchkey adds to the messaging conventions. A key is
// user data and may be personal, so spans carry its length, never the key
// itself; lock names are operator-chosen identifiers and are recorded.
const (
	AttrShard     = attribute.Key("latchkey.shard.id")
	AttrKeyLength = attribute.Key("latchkey.key.length")
	AttrRevision  = attribute.Key("latchkey.revision")
	AttrLockName  = attribute.Key("latchkey.lock.name")
	AttrLockToken = attribute.Key("latchkey.lock.token")
	AttrFenced    = attribute.Key("latchkey.fenced")
	// AttrOutcome and AttrStatusCode are set by End (kit/wire).
	AttrOutcome    = wire.AttrOutcome
	AttrStatusCode = wire.AttrStatusCode
)

// JetStream operations named on the spans of StartJetStream.
const (
	// JSPublish is a (conditional) publish to a stream: a KV write.
	JSPublish = "publish"
	// JSGet is a read of a stream's last message on a subject, answered by
	// the stream leader.
	JSGet = "get"
)

// StartJetStream starts a CLIENT span around one JetStream API request on
// stream (a KV bucket's stream, "KV_<bucket>"), named "<op> <stream>" as
// the messaging conventions name spans ("publish KV_latchkey-shard-0").
// The destination is the stream, not the message subject, because a KV
// subject holds the (encoded) key. Trace context is not written into the
// stored message: its headers are data, kept for ever.
func StartJetStream(ctx context.Context, op, stream string) (context.Context, trace.Span) {
	kind := semconv.MessagingOperationTypeSend
	if op != JSPublish {
		kind = semconv.MessagingOperationTypeReceive
	}
	return TracerFor(ctx).Start(ctx, op+" "+stream,
		trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(natsSystem,
			semconv.MessagingDestinationName(stream),
			semconv.MessagingOperationName(op),
			kind,
			attribute.Bool("messaging.nats.jetstream", true)))
}

// Outcome names an API status code for metric labels and span attributes:
// ok, invalid, not_found, conflict, too_large, unavailable or error (see
// wire.Outcome).
func Outcome(code int) string { return wire.Outcome(code) }
