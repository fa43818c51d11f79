package telemetry

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/latchkey/latchkey/kit/wire"
	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// instrumentation is the tracer name of every latchkey span.
const instrumentation = wire.Instrumentation

// A latchkey process also installs wire's propagator as the global one, so
// that other instrumented code in it passes the same trace context on.
func init() { otel.SetTextMapPropagator(wire.Propagator()) }

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
	exp, err := ExporterFromEnv(ctx)
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

// ExporterFromEnv builds the OTLP span exporter the OTEL_* environment
// describes: gRPC unless OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL starts with
// "http", endpoint and headers as the exporter packages read them.
func ExporterFromEnv(ctx context.Context) (sdktrace.SpanExporter, error) {
	proto := os.Getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
	if proto == "" {
		proto = os.Getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
	}
	if strings.HasPrefix(proto, "http") {
		return otlptracehttp.New(ctx)
	}
	return otlptracegrpc.New(ctx)
}

// Exporter builds an OTLP span exporter for addr: OTLP/gRPC without TLS
// when addr is host:port (Jaeger and collectors listen on 4317), OTLP/HTTP
// when it is a URL (http://host:4318; https for TLS; the path defaults to
// /v1/traces). It is what `latchkey dev --otlp` uses; other settings still
// come from the OTEL_* environment.
func Exporter(ctx context.Context, addr string) (sdktrace.SpanExporter, error) {
	if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		u, err := url.Parse(addr)
		if err != nil {
			return nil, fmt.Errorf("OTLP endpoint %q: %w", addr, err)
		}
		if u.Path == "" || u.Path == "/" {
			u.Path = "/v1/traces"
		}
		return otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(u.String()))
	}
	return otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(addr), otlptracegrpc.WithInsecure())
}

// Tracer returns latchkey's tracer from the global provider.
func Tracer() trace.Tracer { return wire.Tracer() }

// TracerFor returns the tracer of the service ctx belongs to (see
// WithService) when a Tracing is in use, and the global provider's
// otherwise. kit/service.Call starts its CLIENT spans with it.
func TracerFor(ctx context.Context) trace.Tracer {
	if t := current.Load(); t != nil {
		if name := ServiceFrom(ctx); name != "" {
			return t.tracer(name)
		}
	}
	return otel.Tracer(instrumentation)
}

var natsSystem = semconv.MessagingSystemKey.String("nats")

// StartServer starts the span of a service handling msg: "process
// <subject>", kind SERVER, a child of the trace context in msg's headers
// (or the root of a new trace when there is none).
func StartServer(ctx context.Context, msg *nats.Msg, operation string) (context.Context, trace.Span) {
	ctx = wire.Extract(ctx, msg.Header)
	return TracerFor(ctx).Start(ctx, "process "+msg.Subject,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(natsSystem,
			semconv.MessagingDestinationName(msg.Subject),
			semconv.MessagingOperationName(operation),
			semconv.MessagingOperationTypeProcess,
			semconv.MessagingMessageBodySize(len(msg.Data))))
}

// StartClient starts the span of a request sent on subject: "send
// <subject>", kind CLIENT, and writes its context into hdr so that the
// receiver's span becomes its child. The span belongs to ctx's service
// (TracerFor).
func StartClient(ctx context.Context, subject, operation string, hdr nats.Header) (context.Context, trace.Span) {
	return wire.StartClient(ctx, TracerFor(ctx), subject, operation, hdr)
}

// Inject writes ctx's trace context into hdr.
func Inject(ctx context.Context, hdr nats.Header) { wire.Inject(ctx, hdr) }

// End ends span, recording err (if any) as the span's status. code is the
// API status code of the outcome (0 to leave it out).
func End(span trace.Span, code int, err error) { wire.End(span, code, err) }
