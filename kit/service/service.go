// Package service runs a latchkey micro service. It exists because a
// nats.go/micro handler runs on its endpoint's subscription goroutine: a
// handler that waits on JetStream or on another service would cap an
// instance at one request per round trip. Here the micro handler only
// checks capacity and hands the request to a goroutine, which decodes it,
// calls the endpoint function with a deadline, and always replies: with the
// response, or with an error in the micro headers and an Error body.
//
// micro's own stats count every request; because replies are sent after the
// micro handler returned, errors and real latency are reported in each
// endpoint's stats "data" (and by Prometheus), not in micro's num_errors.
package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/codec"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/kit/wire"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// HeaderTimeout carries the caller's remaining patience in milliseconds, so
// a service stops working on a request nobody waits for any more (see
// wire.HeaderTimeout).
const HeaderTimeout = wire.HeaderTimeout

// Request is one decoded-on-demand request.
type Request struct {
	// Msg is the request as it arrived (subject, headers, body).
	Msg *nats.Msg
	// JSON is set when the request, and so the reply, is protojson.
	JSON bool
}

// Decode reads the request body into m; failures are 400s.
func (r *Request) Decode(m proto.Message) error { return codec.Decode(r.Msg.Data, r.JSON, m) }

// Func serves one endpoint. It returns the response message or an error;
// errors that are not *apierr.Error are answered as 500.
type Func func(ctx context.Context, req *Request) (proto.Message, error)

// Endpoint is one micro endpoint.
type Endpoint struct {
	Name    string // micro endpoint name, e.g. "get"
	Subject string // full subject
	Func    Func
	// QueueGroup overrides micro's default queue group "q" (e.g. to keep the
	// replicas of one shard in their own group).
	QueueGroup string
}

// Config describes a service.
type Config struct {
	Name        string // e.g. latchkey-router
	Version     string
	Description string
	Metadata    map[string]string
	Logger      *slog.Logger
	// MaxInFlight bounds concurrent requests per service instance; past it
	// requests get a 503 at once instead of queueing without bound.
	MaxInFlight int
	// Timeout is the deadline of a request that does not carry its own
	// (HeaderTimeout). Default 5s.
	Timeout time.Duration
	// Observe, if set, is called after every reply, in addition to the
	// RED metrics every service records in telemetry.Registry.
	Observe func(endpoint string, code int, elapsed time.Duration)
}

// Service is a running micro service.
type Service struct {
	cfg      Config
	nc       *nats.Conn
	svc      micro.Service
	slots    chan struct{}
	inflight sync.WaitGroup
	stats    sync.Map // endpoint name -> *endpointStats
	gauge    prometheus.Gauge
	ctx      context.Context
	cancel   context.CancelFunc
}

type endpointStats struct {
	Errors   atomic.Int64 `json:"-"`
	Latency  atomic.Int64 `json:"-"` // total nanoseconds
	Requests atomic.Int64 `json:"-"`
}

// Start registers the service and its endpoints on nc.
func Start(nc *nats.Conn, cfg Config, endpoints ...Endpoint) (*Service, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = 4096
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 5 * time.Second
	}
	s := &Service{cfg: cfg, nc: nc, slots: make(chan struct{}, cfg.MaxInFlight), gauge: telemetry.InFlight(cfg.Name)}
	// The service's name travels in every request context, so spans (its
	// own and those of calls it makes) are reported as this service.
	s.ctx, s.cancel = context.WithCancel(telemetry.WithService(context.Background(), cfg.Name))
	// "host" names the instance's machine (a container's hostname), so a
	// healthcheck in the same container can tell its own ping answer from
	// those of the other instances (kit/daemon.Healthcheck).
	md := map[string]string{}
	if host, err := os.Hostname(); err == nil {
		md["host"] = host
	}
	maps.Copy(md, cfg.Metadata)
	svc, err := micro.AddService(nc, micro.Config{
		Name:         cfg.Name,
		Version:      cfg.Version,
		Description:  cfg.Description,
		Metadata:     md,
		StatsHandler: s.statsData,
		ErrorHandler: func(_ micro.Service, e *micro.NATSError) {
			cfg.Logger.Error("service subscription error", "subject", e.Subject, "err", e.Description)
		},
	})
	if err != nil {
		return nil, err
	}
	s.svc = svc
	for _, ep := range endpoints {
		if err := s.Add(ep); err != nil {
			_ = svc.Stop()
			return nil, err
		}
	}
	// Subscriptions travel to the server asynchronously: without a flush a
	// request sent on another connection right after Start returns can find
	// no responders (seen in tests on a busy machine).
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("service %s: subscriptions not confirmed by the server: %w", cfg.Name, err)
	}
	return s, nil
}

// Add registers one more endpoint on a running service.
func (s *Service) Add(ep Endpoint) error {
	st := &endpointStats{}
	s.stats.Store(ep.Name, st)
	opts := []micro.EndpointOpt{micro.WithEndpointSubject(ep.Subject)}
	if ep.QueueGroup != "" {
		opts = append(opts, micro.WithEndpointQueueGroup(ep.QueueGroup))
	}
	return s.svc.AddEndpoint(ep.Name, micro.HandlerFunc(func(r micro.Request) {
		s.dispatch(ep, st, r)
	}), opts...)
}

// Info returns micro's description of the instance.
func (s *Service) Info() micro.Info { return s.svc.Info() }

func (s *Service) dispatch(ep Endpoint, st *endpointStats, r micro.Request) {
	msg := &nats.Msg{Subject: r.Subject(), Reply: r.Reply(), Data: r.Data(), Header: nats.Header(r.Headers())}
	req := &Request{Msg: msg, JSON: codec.IsJSON(msg.Header, msg.Data)}
	select {
	case s.slots <- struct{}{}:
	default:
		_, span := telemetry.StartServer(s.ctx, msg, ep.Name)
		s.reply(ep, st, req, time.Now(), nil, apierr.Errorf(apierr.ReasonOverloaded,
			"%s has %d requests in flight; retry", s.cfg.Name, s.cfg.MaxInFlight), span)
		return
	}
	s.inflight.Add(1)
	s.gauge.Inc()
	go func() {
		defer func() { <-s.slots; s.gauge.Dec(); s.inflight.Done() }()
		start := time.Now()
		deadline, late := s.deadline(msg.Header, start)
		ctx, cancel := context.WithDeadline(s.ctx, deadline)
		defer cancel()
		ctx, span := telemetry.StartServer(ctx, msg, ep.Name)
		if late {
			// Delivered after its caller gave up (wire.HeaderDeadline):
			// doing it now could apply a write after the caller's next.
			s.reply(ep, st, req, start, nil, apierr.Errorf(apierr.ReasonDeadlinePassed,
				"%s: the request arrived %v after its deadline (or the caller's clock is that far behind); it was not carried out",
				s.cfg.Name, start.Sub(deadline).Round(time.Millisecond)+ClockAllowance), span)
			return
		}
		resp, err := ep.Func(ctx, req)
		s.reply(ep, st, req, start, resp, err, span)
	}()
}

// ClockAllowance is how far apart the clocks of a caller and a service may
// be: a request is refused as late only once its deadline passed by more.
const ClockAllowance = 100 * time.Millisecond

// deadline is when work on a request arriving at now must end: its
// remaining time (HeaderTimeout, or the configured Timeout), cut to the
// instant it names (wire.HeaderDeadline) plus ClockAllowance. late reports
// that the instant passed before the request arrived.
func (s *Service) deadline(h nats.Header, now time.Time) (deadline time.Time, late bool) {
	deadline = now.Add(s.timeout(h))
	if abs, ok := wire.RequestDeadline(h); ok {
		abs = abs.Add(ClockAllowance)
		if !abs.After(now) {
			return abs, true
		}
		if abs.Before(deadline) {
			deadline = abs
		}
	}
	return deadline, false
}

func (s *Service) timeout(h nats.Header) time.Duration {
	if v := h.Get(HeaderTimeout); v != "" {
		if ms, err := strconv.ParseInt(v, 10, 64); err == nil && ms > 0 {
			if d := time.Duration(ms) * time.Millisecond; d < s.cfg.Timeout*12 {
				return d
			}
		}
	}
	return s.cfg.Timeout
}

func (s *Service) reply(ep Endpoint, st *endpointStats, req *Request, start time.Time, resp proto.Message, err error, span trace.Span) {
	out, code, err := s.message(ep, req, resp, err)
	if req.Msg.Reply != "" {
		perr := s.nc.PublishMsg(out)
		if errors.Is(perr, nats.ErrMaxPayload) {
			// Every request gets a reply: one NATS cannot carry becomes a
			// small 413, counted as the error it is.
			err = apierr.Errorf(apierr.ReasonReplyTooLarge, "%s: the %s reply is %d bytes (plus headers); the NATS server's max_payload is %d bytes",
				s.cfg.Name, ep.Name, len(out.Data), s.nc.MaxPayload())
			out, code, err = s.message(ep, req, nil, err)
			perr = s.nc.PublishMsg(out)
		}
		if perr != nil {
			s.cfg.Logger.Warn("reply not sent", "endpoint", ep.Name, "err", perr)
		}
	}
	if err != nil {
		st.Errors.Add(1)
	}
	elapsed := time.Since(start)
	st.Requests.Add(1)
	st.Latency.Add(int64(elapsed))
	telemetry.End(span, code, err)
	telemetry.Observe(s.cfg.Name, ep.Name, code, elapsed)
	if s.cfg.Observe != nil {
		s.cfg.Observe(ep.Name, code, elapsed)
	}
}

// message encodes the reply to req: resp, or err as micro's error headers
// and an Error body. It returns the code and the error as answered (nil
// for a 200).
func (s *Service) message(ep Endpoint, req *Request, resp proto.Message, err error) (*nats.Msg, int, error) {
	code := 200
	out := &nats.Msg{Subject: req.Msg.Reply}
	if err == nil && resp != nil {
		out.Data, err = codec.Encode(resp, req.JSON)
	}
	if err != nil {
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			// apierr.From makes it the 503 timeout; the message names us.
			err = fmt.Errorf("%s: request timed out: %w", s.cfg.Name, err)
		case errors.Is(err, context.Canceled):
			// Only Stop cancels request contexts (or a service's own stop
			// cancels what a handler waits on): the request was cut short
			// by shutdown, not wrong, so another instance can serve it.
			err = apierr.Errorf(apierr.ReasonShuttingDown, "%s is shutting down; retry", s.cfg.Name)
		case jskv.TooLarge(err):
			// A message NATS refuses for its size stays refused: retrying
			// (a 503) cannot help, the caller must send less.
			err = jskv.TooLargeError(s.cfg.Name+": "+ep.Name, err)
		}
		e := apierr.From(err)
		code = e.Code()
		if code == 500 {
			s.cfg.Logger.Error("internal error", "endpoint", ep.Name, "err", err)
		}
		out.Header = nats.Header{}
		out.Header.Set(apierr.HeaderCode, strconv.Itoa(code))
		out.Header.Set(apierr.HeaderMessage, e.Message)
		out.Data, _ = codec.Encode(&pb.Error{Code: int32(code), Reason: e.Reason, Message: e.Message}, req.JSON)
	}
	if req.JSON {
		if out.Header == nil {
			out.Header = nats.Header{}
		}
		out.Header.Set("Content-Type", codec.ContentTypeJSON)
	}
	return out, code, err
}

// statsData is the "data" of each endpoint in $SRV.STATS: the figures
// micro cannot see because replies leave after its handler returned.
func (s *Service) statsData(e *micro.Endpoint) any {
	v, ok := s.stats.Load(e.Name)
	if !ok {
		return nil
	}
	st := v.(*endpointStats)
	n := st.Requests.Load()
	avg := int64(0)
	if n > 0 {
		avg = st.Latency.Load() / n
	}
	return map[string]int64{"replied": n, "errors": st.Errors.Load(), "average_latency_ns": avg}
}

// Stop drains the endpoint subscriptions (no new requests), waits for the
// requests in flight to be answered, up to ctx, then cancels the rest.
func (s *Service) Stop(ctx context.Context) error {
	err := s.svc.Stop()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.cancel()
		<-done
	}
	s.cancel()
	return err
}
