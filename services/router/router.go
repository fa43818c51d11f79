// Package router is latchkey's key-value front door: the micro service
// "latchkey-router" answering kv.get, kv.put, kv.delete and kv.scan. It
// checks each request against the API limits, picks the owning shard with
// rendezvous hashing over the deployment's durable shard map, and forwards
// the request to that shard's storage instances as protobuf. kv.scan asks
// every shard and merges their pages in key order.
//
// The shard set lives in a JetStream KV record (epoch + shard ids) that
// every router watches; it is never derived from which storage instances
// happen to be up. A key whose shard has no instance gets a 503 naming the
// shard; it is never rehashed elsewhere.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/kit/telemetry"
	"github.com/latchkey/latchkey/kit/wire"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// ServiceName is the micro service name of every router instance.
const ServiceName = "latchkey-router"

// Version is reported in the micro service info.
const Version = "0.1.0"

// Config configures a router.
type Config struct {
	Prefix        string // "" = "latchkey"
	Shards        int    // if > 0: ensure the shard map has shards "0".."N-1" (create it if absent); 0 = use the existing map (error if none)
	Replicas      int    // JetStream replicas for the meta bucket; 0 = 1
	MaxValueBytes int    // 0 = limits.DefaultMaxValue
	Logger        *slog.Logger
	// NoMover keeps this router from driving moves of the shard set (it
	// still routes through them). Every router drives by default, one at
	// a time under a lease, so a move outlives the router driving it.
	NoMover bool
	// MoverLease is how long a driving router's claim on a move lasts
	// without renewal: a router that died mid-move is replaced after it.
	// 0 = 10 s.
	MoverLease time.Duration
}

// Server is a running router instance.
type Server struct {
	nc    *nats.Conn
	subj  subjects.Set
	max   int
	log   *slog.Logger
	kv    jetstream.KeyValue
	js    jetstream.JetStream
	route atomic.Pointer[routing]
	svc   *service.Service
	stop  context.CancelFunc
	done  chan struct{}
}

// Start loads (or creates, see Config.Shards) the shard map, starts
// watching it and registers the router's endpoints. ctx bounds the start
// only; the router runs until Stop. Start fails with ErrNoShardMap or
// ErrMigrationNeeded when the shard map cannot be used as asked.
func Start(ctx context.Context, nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.Shards < 0 {
		return nil, fmt.Errorf("shards is %d; it must be 0 (use the existing map) or more", cfg.Shards)
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxValueBytes <= 0 {
		cfg.MaxValueBytes = limits.DefaultMaxValue
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{nc: nc, subj: subjects.New(cfg.Prefix), max: cfg.MaxValueBytes,
		log: cfg.Logger.With("service", ServiceName), done: make(chan struct{})}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	s.js = js
	if s.kv, err = openMeta(ctx, js, s.subj.MetaBucket(), cfg.Replicas, s.log); err != nil {
		return nil, err
	}
	m, err := ensureMap(ctx, js, s.kv, s.subj.ShardBucket, cfg.Shards)
	if err != nil {
		return nil, err
	}
	s.apply(m)

	wctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	mv := newMover(s, js)
	if cfg.MoverLease > 0 {
		mv.leaseFor = cfg.MoverLease
	}
	go func() {
		defer close(s.done)
		var wg sync.WaitGroup
		if !cfg.NoMover {
			wg.Go(func() { mv.run(wctx) })
		}
		s.watchMap(wctx)
		wg.Wait()
	}()

	ep := func(name, public string, f service.Func) service.Endpoint {
		return service.Endpoint{Name: name, Subject: s.subj.Public(public), Func: f}
	}
	s.svc, err = service.Start(nc, service.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "latchkey key-value router: checks requests and forwards them to their shard",
		Metadata:    map[string]string{"prefix": s.subj.Prefix},
		Logger:      s.log,
	}, append(append([]service.Endpoint{
		ep("get", subjects.KVGet, s.get),
		ep("put", subjects.KVPut, s.put),
		ep("delete", subjects.KVDelete, s.delete),
		ep("scan", subjects.KVScan, s.scan),
	}, s.watchEndpoints()...), s.adminEndpoints()...)...)
	if err != nil {
		cancel()
		<-s.done
		return nil, err
	}
	s.log.Info("router started", "prefix", s.subj.Prefix, "epoch", m.Epoch, "shards", len(m.Shards))
	return s, nil
}

// Stop stops taking requests, answers those in flight (up to ctx) and
// stops watching the shard map.
func (s *Server) Stop(ctx context.Context) error {
	err := s.svc.Stop(ctx)
	s.stop()
	<-s.done
	return err
}

// ShardMap returns the epoch and the sorted shard ids the router is using.
func (s *Server) ShardMap() (epoch uint64, shards []string) {
	r := s.route.Load()
	return r.epoch, append([]string(nil), r.hash.Shards()...)
}

func (s *Server) get(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.GetRequest{}
	if err := decodeCheck(r, in, s.max); err != nil {
		return nil, err
	}
	return s.forward(ctx, in.Key, "get", in, &pb.GetResponse{})
}

func (s *Server) put(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.PutRequest{}
	if err := decodeCheck(r, in, s.max); err != nil {
		return nil, err
	}
	return s.forward(ctx, in.Key, "put", in, &pb.PutResponse{})
}

func (s *Server) delete(ctx context.Context, r *service.Request) (proto.Message, error) {
	in := &pb.DeleteRequest{}
	if err := decodeCheck(r, in, s.max); err != nil {
		return nil, err
	}
	return s.forward(ctx, in.Key, "delete", in, &pb.DeleteResponse{})
}

func decodeCheck(r *service.Request, m proto.Message, maxValue int) error {
	if err := r.Decode(m); err != nil {
		return err
	}
	return limits.Request(m, maxValue)
}

// forward sends in to the shard owning key and returns its answer, out.
// Shard errors come back unchanged; transport failures become 503s that
// name the shard.
func (s *Server) forward(ctx context.Context, key, op string, in, out proto.Message) (proto.Message, error) {
	r := s.route.Load()
	id := r.hash.Get(key)
	span := trace.SpanFromContext(ctx)
	span.SetAttributes(telemetry.AttrShard.String(id), telemetry.AttrKeyLength.Int(len(key)))
	if f := fenceOf(in); f != nil {
		span.SetAttributes(telemetry.AttrFenced.Bool(true), telemetry.AttrLockName.String(f.Lock), telemetry.AttrLockToken.Int64(int64(f.Token)))
	}
	if err := s.callMoving(ctx, r, key, id, op, in, out, false); err != nil {
		return nil, err
	}
	if rv, ok := out.(interface{ GetRevision() uint64 }); ok && rv.GetRevision() != 0 {
		span.SetAttributes(telemetry.AttrRevision.Int64(int64(rv.GetRevision())))
	}
	return out, nil
}

func fenceOf(m proto.Message) *pb.Fence {
	switch r := m.(type) {
	case *pb.PutRequest:
		return r.Fence
	case *pb.DeleteRequest:
		return r.Fence
	}
	return nil
}

// call is one request to one shard. It leaves a little of the caller's
// deadline so that a slow shard is reported as a 503 the caller still
// waits for, rather than as the caller's own timeout.
func (s *Server) call(ctx context.Context, id, op string, in, out proto.Message, hdr nats.Header) error {
	if dl, ok := ctx.Deadline(); ok {
		margin := min(time.Until(dl)/20, 100*time.Millisecond)
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-margin))
		defer cancel()
	}
	subject := s.subj.Shard(id, op)
	data, err := proto.Marshal(in)
	if err != nil {
		return apierr.Errorf(apierr.ReasonInternal, "cannot encode the shard request: %v", err)
	}
	msg := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	for k, v := range hdr {
		msg.Header[k] = v
	}
	wire.SetDeadline(ctx, msg.Header)
	// The shard's span is the child of this hop's CLIENT span, which is
	// the child of the router's own span: the trace shows the router even
	// when the caller sent no trace context.
	ctx, span := telemetry.StartClient(ctx, subject, op, msg.Header)
	span.SetAttributes(telemetry.AttrShard.String(id))
	err = s.request(ctx, msg, id, out)
	telemetry.End(span, apierr.Code(err), err)
	return err
}

func (s *Server) request(ctx context.Context, msg *nats.Msg, id string, out proto.Message) error {
	reply, err := s.nc.RequestMsgWithContext(ctx, msg)
	if err == nil {
		return service.DecodeReply(reply, out)
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return apierr.Errorf(apierr.ReasonShardUnavailable, "shard %s is unavailable: no storage instance serves it", id)
	// From is the one place that says a passed deadline is a timeout; a
	// shard's is shard_timeout, so the caller sees which hop ran out.
	case errors.Is(apierr.From(err), apierr.ReasonTimeout), errors.Is(err, nats.ErrTimeout):
		return apierr.Errorf(apierr.ReasonShardTimeout, "shard %s did not answer in time", id)
	}
	return service.TransportError(msg.Subject, err)
}

// epochHeader returns hdr (a new one when nil) carrying this router's
// map epoch (shardfmt.HeaderEpoch).
func (s *Server) epochHeader(hdr nats.Header) nats.Header {
	if hdr == nil {
		hdr = nats.Header{}
	}
	hdr.Set(shardfmt.HeaderEpoch, strconv.FormatUint(s.route.Load().epoch, 10))
	return hdr
}

// maxMoveHops bounds how often one request follows moved and handover
// answers, should it have no deadline to end it.
const maxMoveHops = 500

// callMoving is call for a key's request, following the key across a move
// of the shard set: a shard that answers moved handed the key to its owner
// in the move's target set, which is asked next with shardfmt.HeaderHandover
// (it answers 503 handover while the copy has not landed); a moved answer
// with no target in sight re-reads the map. It retries within the caller's
// deadline and returns the last error when that runs out. handover says
// that id is already asked as the key's new owner (a scan that was told
// the key was handed over).
func (s *Server) callMoving(ctx context.Context, r *routing, key, id, op string, in, out proto.Message, handover bool) error {
	for attempt := 0; ; attempt++ {
		hdr := s.epochHeader(nil)
		if handover {
			hdr.Set(shardfmt.HeaderHandover, "1")
		}
		err := s.call(ctx, id, op, in, out, hdr)
		if err == nil {
			return nil
		}
		if attempt >= maxMoveHops {
			return err
		}
		switch {
		case errors.Is(err, apierr.ReasonMoved):
			if attempt > 0 {
				// Shards disagree for a moment (a view that has not applied
				// the latest record yet): do not bounce at full speed.
				select {
				case <-ctx.Done():
					return err
				case <-time.After(min(time.Duration(1<<min(attempt, 5))*time.Millisecond, 20*time.Millisecond)):
				}
			}
			next := ""
			if r.target != nil {
				next = r.target.Get(key)
			}
			if next == "" || next == id {
				// The map may have flipped (or the move was replaced)
				// since this routing was taken: read it again.
				s.refresh(ctx)
				r = s.route.Load()
				next = r.hash.Get(key)
				if next == id && r.target != nil {
					next = r.target.Get(key)
				}
				if next == id {
					return err
				}
			}
			id, handover = next, true
		case errors.Is(err, apierr.ReasonHandover):
			// The copy is on its way (one publish): wait a little.
			wait := min(time.Duration(1<<min(attempt, 6))*time.Millisecond, 50*time.Millisecond)
			select {
			case <-ctx.Done():
				return err
			case <-time.After(wait):
			}
			if cur := s.route.Load(); cur != r && !cur.moving && cur.target == nil {
				// Flipped meanwhile: the new owner now serves absent keys.
				r, id, handover = cur, cur.hash.Get(key), false
			}
		default:
			return err
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < 10*time.Millisecond {
			return err
		}
		proto.Reset(out)
	}
}
