package telemetry

import (
	"context"
	"errors"
	"os"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.39.0"
	"go.opentelemetry.io/otel/trace"
)

// A trace back end groups spans by the service.name of their tracer
// provider's resource, and a provider has exactly one resource. `latchkey
// dev` and the in-process tests run router, storage and locker in one
// process, yet their spans must show up as three services. So a process
// may use a Tracing: one provider per service name, all feeding one
// exporter. kit/service marks each service's contexts with its name
// (WithService) and every span started here picks its provider from ctx.
// A process running one service (the daemons) needs none of this: Setup
// installs a single global provider, and contexts without a name use it.

type serviceKey struct{}

// WithService marks ctx as work of the named service (e.g.
// "latchkey-router"): spans started from it, and from contexts derived
// from it, belong to that service when a Tracing is in use.
func WithService(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, serviceKey{}, name)
}

// ServiceFrom returns the service name WithService put in ctx, or "".
func ServiceFrom(ctx context.Context) string {
	name, _ := ctx.Value(serviceKey{}).(string)
	return name
}

// Tracing is a set of tracer providers, one per service name, that share
// one exporter. Create it with NewTracing and make it the process's with
// Use.
type Tracing struct {
	exp  sdktrace.SpanExporter
	sync bool
	base *resource.Resource

	mu        sync.Mutex
	providers map[string]*sdktrace.TracerProvider
	tracers   sync.Map // service name -> trace.Tracer
	closed    bool
}

// NewTracing returns a Tracing exporting to exp. With sync set, each span
// is exported as it ends (tests that read spans at once); otherwise spans
// are batched, as production should. Resource attributes come from the
// OTEL_RESOURCE_ATTRIBUTES environment, except service.name, which is the
// name each provider is asked for.
func NewTracing(exp sdktrace.SpanExporter, sync bool) *Tracing {
	base, err := resource.New(context.Background(), resource.WithFromEnv(), resource.WithTelemetrySDK())
	if err != nil {
		base = resource.Default()
	}
	return &Tracing{exp: sharedExporter{exp}, sync: sync, base: base, providers: map[string]*sdktrace.TracerProvider{}}
}

// Provider returns the tracer provider of the named service, creating it
// on first use.
func (t *Tracing) Provider(service string) trace.TracerProvider {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tp, ok := t.providers[service]; ok {
		return tp
	}
	res, err := resource.Merge(t.base, resource.NewSchemaless(semconv.ServiceName(service)))
	if err != nil {
		res = resource.NewSchemaless(semconv.ServiceName(service))
	}
	export := sdktrace.WithBatcher(t.exp)
	if t.sync {
		export = sdktrace.WithSyncer(t.exp)
	}
	tp := sdktrace.NewTracerProvider(export, sdktrace.WithResource(res))
	t.providers[service] = tp
	return tp
}

func (t *Tracing) tracer(service string) trace.Tracer {
	if tr, ok := t.tracers.Load(service); ok {
		return tr.(trace.Tracer)
	}
	tr := t.Provider(service).Tracer(instrumentation)
	t.tracers.Store(service, tr)
	return tr
}

// Shutdown flushes every provider's spans to the exporter, then stops the
// exporter. Spans started afterwards are dropped.
func (t *Tracing) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	tps := make([]*sdktrace.TracerProvider, 0, len(t.providers))
	for _, tp := range t.providers {
		tps = append(tps, tp)
	}
	t.mu.Unlock()
	var errs []error
	for _, tp := range tps {
		errs = append(errs, tp.Shutdown(ctx))
	}
	errs = append(errs, t.exp.(sharedExporter).SpanExporter.Shutdown(ctx))
	return errors.Join(errs...)
}

// ForceFlush exports every span that has ended so far.
func (t *Tracing) ForceFlush(ctx context.Context) error {
	t.mu.Lock()
	tps := make([]*sdktrace.TracerProvider, 0, len(t.providers))
	for _, tp := range t.providers {
		tps = append(tps, tp)
	}
	t.mu.Unlock()
	var errs []error
	for _, tp := range tps {
		errs = append(errs, tp.ForceFlush(ctx))
	}
	return errors.Join(errs...)
}

// sharedExporter keeps the providers' shutdowns from closing the exporter
// they share; Tracing.Shutdown closes it once, last.
type sharedExporter struct{ sdktrace.SpanExporter }

func (sharedExporter) Shutdown(context.Context) error { return nil }

var current atomic.Pointer[Tracing]

// Use makes t the process's tracing: spans from contexts marked by
// WithService go to that service's provider, and the global provider (for
// code that names no service, such as the Go client) becomes
// t.Provider(defaultService). Use(nil, "") stops routing by service name
// and leaves the global provider as it is.
func Use(t *Tracing, defaultService string) {
	current.Store(t)
	if t != nil {
		otel.SetTracerProvider(t.Provider(defaultService))
	}
}

// SetupServices is Setup for a process that runs several services
// (latchkey dev): it exports to addr (see Exporter) or, when addr is
// empty, where the OTEL_* environment says, with one provider per service
// name, and installs it with Use. Spans of code that names no service are
// reported as defaultService, or as OTEL_SERVICE_NAME when that is set.
// With neither addr nor an OTEL endpoint it does nothing, like Setup.
func SetupServices(ctx context.Context, defaultService, addr string) (shutdown func(context.Context) error, err error) {
	var exp sdktrace.SpanExporter
	switch {
	case addr != "":
		exp, err = Exporter(ctx, addr)
	case Enabled():
		exp, err = ExporterFromEnv(ctx)
	default:
		return func(context.Context) error { return nil }, nil
	}
	if err != nil {
		return nil, err
	}
	if name := os.Getenv("OTEL_SERVICE_NAME"); name != "" {
		defaultService = name
	}
	t := NewTracing(exp, false)
	Use(t, defaultService)
	return func(ctx context.Context) error {
		if current.Load() == t {
			current.Store(nil)
		}
		return t.Shutdown(ctx)
	}, nil
}
