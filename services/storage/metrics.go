package storage

import (
	"context"
	"errors"
	"sync"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/telemetry"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/protobuf/proto"
)

// Shard metrics. They are registered once per process (package init), on
// telemetry.Registry, and told apart by their shard label: a process may
// run several storage instances (latchkey dev, tests), and registering per
// instance would collide.
var (
	shardOps = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_shard_operations_total",
		Help: "Shard requests answered, by shard, operation (get, put, delete, scan) and outcome (ok, conflict, invalid, too_large, unavailable, error).",
	}, []string{"shard", "op", "outcome"})
	fenceRejections = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_fence_rejections_total",
		Help: "Fenced writes refused because the key was already written under a newer token of the same lock (stale fence, 409), by shard.",
	}, []string{"shard"})
	expiringWrites = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_shard_expiry_waits_total",
		Help: "Writes whose base value was within the TTL guard of its expiry, so they waited for the server's expiry marker, by shard.",
	}, []string{"shard"})
	expiryLosses = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "latchkey_shard_expiry_rewrites_total",
		Help: "Writes acknowledged so late that the server's expiry marker purged them, found by the check after the ack and written again, by shard.",
	}, []string{"shard"})
	shardKeysDesc = prometheus.NewDesc("latchkey_shard_keys",
		"Live keys of a shard as this instance's view of the shard's stream holds them.", []string{"shard"}, nil)
)

func init() {
	telemetry.Registry.MustRegister(shardOps, fenceRejections, expiringWrites, expiryLosses, openShards)
}

// openShards reports latchkey_shard_keys for every shard open in this
// process. When several instances in one process serve the same shard (a
// test cluster), the largest count is reported: one series per shard.
var openShards = &shardSet{m: map[*shard]struct{}{}}

type shardSet struct {
	mu sync.Mutex
	m  map[*shard]struct{}
}

func (s *shardSet) add(sh *shard)    { s.mu.Lock(); s.m[sh] = struct{}{}; s.mu.Unlock() }
func (s *shardSet) remove(sh *shard) { s.mu.Lock(); delete(s.m, sh); s.mu.Unlock() }

// Describe implements prometheus.Collector.
func (s *shardSet) Describe(ch chan<- *prometheus.Desc) { ch <- shardKeysDesc }

// Collect implements prometheus.Collector.
func (s *shardSet) Collect(ch chan<- prometheus.Metric) {
	s.mu.Lock()
	keys := map[string]int{}
	for sh := range s.m {
		if n := sh.view.liveKeys(); n > keys[sh.id] {
			keys[sh.id] = n
		} else if _, ok := keys[sh.id]; !ok {
			keys[sh.id] = n
		}
	}
	s.mu.Unlock()
	for id, n := range keys {
		ch <- prometheus.MustNewConstMetric(shardKeysDesc, prometheus.GaugeValue, float64(n), id)
	}
}

// instrument wraps a shard endpoint: it labels the request's span with the
// shard and the outcome, and counts the operation.
func (sh *shard) instrument(op string, fn service.Func) service.Func {
	return func(ctx context.Context, req *service.Request) (proto.Message, error) {
		span := trace.SpanFromContext(ctx)
		span.SetAttributes(telemetry.AttrShard.String(sh.id))
		resp, err := fn(ctx, req)
		code := apierr.Code(err)
		if errors.Is(err, apierr.ReasonStaleFence) {
			fenceRejections.WithLabelValues(sh.id).Inc()
		}
		if rv, ok := resp.(interface{ GetRevision() uint64 }); ok && rv.GetRevision() != 0 {
			span.SetAttributes(telemetry.AttrRevision.Int64(int64(rv.GetRevision())))
		}
		shardOps.WithLabelValues(sh.id, op, telemetry.Outcome(code)).Inc()
		return resp, err
	}
}

// describe adds what a decoded request says to its span: the key's length
// (never the key) and the fence of a fenced write.
func describe(ctx context.Context, m proto.Message) {
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	var (
		key   string
		fence *pb.Fence
	)
	switch r := m.(type) {
	case *pb.GetRequest:
		key = r.Key
	case *pb.PutRequest:
		key, fence = r.Key, r.Fence
	case *pb.DeleteRequest:
		key, fence = r.Key, r.Fence
	default:
		return
	}
	span.SetAttributes(telemetry.AttrKeyLength.Int(len(key)))
	if fence != nil {
		span.SetAttributes(telemetry.AttrFenced.Bool(true), telemetry.AttrLockName.String(fence.Lock),
			telemetry.AttrLockToken.Int64(int64(fence.Token)))
	}
}
