package telemetry

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Registry holds every latchkey metric of a process. One registry serves a
// process that runs several services (latchkey dev): series are told apart
// by their "service" label.
var Registry = prometheus.NewRegistry()

func init() {
	Registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
}

// RED metrics of every service endpoint, fed by kit/service.
var (
	requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_requests_total",
		Help: "Requests answered, by service, endpoint and API status code (200 for success).",
	}, []string{"service", "endpoint", "code"})
	duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "latchkey_request_duration_seconds",
		Help:    "Time from a request's arrival to its reply, by service and endpoint.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"service", "endpoint"})
	inflight = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "latchkey_requests_in_flight",
		Help: "Requests being served now, by service.",
	}, []string{"service"})
)

func init() { Registry.MustRegister(requests, duration, inflight) }

// Observe records one answered request.
func Observe(service, endpoint string, code int, elapsed time.Duration) {
	requests.WithLabelValues(service, endpoint, strconv.Itoa(code)).Inc()
	duration.WithLabelValues(service, endpoint).Observe(elapsed.Seconds())
}

// InFlight returns the gauge of requests in flight for service.
func InFlight(service string) prometheus.Gauge { return inflight.WithLabelValues(service) }

// ServeMetrics serves Registry on addr at /metrics until ctx ends. An
// empty addr serves nothing. It returns once the listener is bound, so a
// bad address fails at start-up, not later.
func ServeMetrics(ctx context.Context, addr string, log *slog.Logger) (net.Addr, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(Registry, promhttp.HandlerOpts{Registry: Registry}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	return ln.Addr(), nil
}
