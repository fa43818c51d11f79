package locker

import (
	"context"
	"errors"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// Locker metrics, registered once per process on telemetry.Registry. Lock
// names are not labels: there may be millions of them.
var (
	acquisitions = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_lock_acquisitions_total",
		Help: "Acquire requests answered, by outcome: acquired, contended (409: the lock stayed held), invalid, too_large, unavailable, error.",
	}, []string{"outcome"})
	releases = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_lock_releases_total",
		Help: "Release requests answered, by outcome: ok, conflict (the token no longer held the lock), invalid, unavailable, error.",
	}, []string{"outcome"})
	renewals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_lock_renewals_total",
		Help: "Renew requests answered, by outcome: ok, conflict (the lease was already lost), invalid, unavailable, error.",
	}, []string{"outcome"})
	waiters = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "latchkey_lock_waiters",
		Help: "Acquire requests with wait_ms > 0 in progress on this locker: callers queued for a lock.",
	})
	waitSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "latchkey_lock_wait_seconds",
		Help:    "Time waiting acquires (wait_ms > 0) spent from arrival to their answer, by outcome (acquired, contended, ...).",
		Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
	}, []string{"outcome"})
	expiries = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "latchkey_lock_expiries_total",
		Help: "Leases that ran out (the NATS server removed an unrenewed lock) while requests on this locker waited for the lock.",
	})
	renewalsLost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "latchkey_lock_renewals_lost_total",
		Help: "Renewals acknowledged by JetStream as their lease expired and purged by the server's expiry marker; answered 409 renew_too_late.",
	})
	writesRecognised = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "latchkey_lock_writes_recognised_total",
		Help: "Lock writes JetStream refused although it had stored them (e.g. at a partition heal), recognised by their write id on the next read and answered as done.",
	})
	viewWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_lock_view_writes_total",
		Help: "Lock writes conditioned on the locker's view of the bucket instead of a leader read, by outcome: stored, refused (the view was out of date or another write was in flight: re-read from the leader), error.",
	}, []string{"outcome"})
)

// viewGuess counts the outcome of a write conditioned on the view.
func viewGuess(err error) {
	switch {
	case err == nil:
		viewWrites.WithLabelValues("stored").Inc()
	case errors.Is(err, jskv.ErrWrongLastSequence):
		viewWrites.WithLabelValues("refused").Inc()
	default:
		viewWrites.WithLabelValues("error").Inc()
	}
}

func init() {
	telemetry.Registry.MustRegister(acquisitions, releases, renewals, waiters, waitSeconds, expiries, renewalsLost, writesRecognised, viewWrites)
}

// instrument wraps a lock endpoint: it counts the answer by outcome, times
// waiting acquires and labels the span with the outcome.
func instrument(endpoint string, fn service.Func) service.Func {
	return func(ctx context.Context, req *service.Request) (proto.Message, error) {
		start := time.Now()
		if endpoint == "acquire" {
			ctx = withWaitMark(ctx)
		}
		resp, err := fn(ctx, req)
		outcome := telemetry.Outcome(apierr.Code(err))
		switch endpoint {
		case "acquire":
			switch outcome {
			case "ok":
				outcome = "acquired"
			case "conflict":
				outcome = "contended"
			}
			acquisitions.WithLabelValues(outcome).Inc()
			if waited(ctx) {
				waitSeconds.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
			}
		case "release":
			releases.WithLabelValues(outcome).Inc()
		case "renew":
			renewals.WithLabelValues(outcome).Inc()
		}
		trace.SpanFromContext(ctx).SetAttributes(telemetry.AttrOutcome.String(outcome))
		return resp, err
	}
}

// waitMark lets acquireWait tell instrument that this acquire waited.
type waitMark struct{ waited bool }

type waitMarkKey struct{}

func withWaitMark(ctx context.Context) context.Context {
	return context.WithValue(ctx, waitMarkKey{}, &waitMark{})
}

func markWaited(ctx context.Context) {
	if m, ok := ctx.Value(waitMarkKey{}).(*waitMark); ok {
		m.waited = true
	}
}

func waited(ctx context.Context) bool {
	m, ok := ctx.Value(waitMarkKey{}).(*waitMark)
	return ok && m.waited
}
