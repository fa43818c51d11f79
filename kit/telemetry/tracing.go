package telemetry

import (
	"context"
	"errors"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentation is the tracer name of every latchkey span.
const instrumentation = "github.com/latchkey/latchkey"

var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

func init() { otel.SetTextMapPropagator(propagator) }

// Enabled reports whether the environment asks for trace export: an OTLP
// endpoint is configured and OTEL_TRACES_EXPORTER is not "none".
func Enabled() bool {
	if os.Getenv("OTEL_SDK_DISABLED") == "true" || os.Getenv("OTEL_TRACES_EXPORTER") == "none" {
		return false
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs a global tracer provider that exports over OTLP when
// Enabled, named serviceName unless OTEL_SERVICE_NAME says otherwise. With
// no endpoint configured it installs nothing: spans are then non-recording
// and cost next to nothing, while incoming trace context is still passed
// on. The returned function flushes and stops the exporter.
func Setup(ctx context.Context, serviceName string) (shutdown func(context.Context) error, err error) {
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	var exp *otlptrace.Exporter
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if strings.HasPrefix(proto, "http") {
		exp, err = otlptracehttp.New(ctx)
	} else {
		exp, err = otlptracegrpc.New(ctx)
	}
	if err != nil {
		return nil, err
	}
	attrs := []attribute.KeyValue{}
	if os.Getenv("OTEL_SERVICE_NAME") == "" {
		attrs = append(attrs, semconv.ServiceName(serviceName))
	}
	res, err := resource.New(ctx, resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithAttributes(attrs...))
	if err != nil {
		return nil, err
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Tracer returns latchkey's tracer from the global provider.
func Tracer() trace.Tracer { return otel.Tracer(instrumentation) }

var natsSystem = semconv.MessagingSystemKey.String("nats")

// StartServer starts the span of a service handling msg: "process
// <subject>", kind SERVER, a child of the trace context in msg's headers
// (or the root of a new trace when there is none).
func StartServer(ctx context.Context, msg *nats.Msg, operation string) (context.Context, trace.Span) {
	if msg.Header != nil {
		ctx = propagator.Extract(ctx, HeaderCarrier(msg.Header))
	}
	return Tracer().Start(ctx, "process "+msg.Subject,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(natsSystem,
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingOperationName(operation),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingMessageBodySize(len(msg.Data))))
}

// StartClient starts the span of a request sent on subject: "send
// <subject>", kind CLIENT, and writes its context into hdr so that the
// receiver's span becomes its child.
func StartClient(ctx context.Context, subject, operation string, hdr nats.Header) (context.Context, trace.Span) {
	ctx, span := Tracer().Start(ctx, "send "+subject,
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

// End ends span, recording err (if any) as the span's status. code is the
// API status code of the outcome (0 to leave it out).
func End(span trace.Span, code int, err error) {
	if code != 0 {
		span.SetAttributes(attribute.Int("latchkey.status_code", code))
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
