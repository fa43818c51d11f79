package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"time"

	"github.com/latchkey/latchkey/kit/limits"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ServiceName is the micro service name of shard instances.
const ServiceName = "latchkey-storage"

// Version is reported in the micro service info.
const Version = "0.1.0"

// Config configures a storage instance.
type Config struct {
	Prefix        string       // subject prefix; "" = "latchkey"
	Shards        []string     // shard ids this instance serves, e.g. {"0","1","2"}
	Replicas      int          // JetStream replicas of shard buckets (1 single server, 3 cluster); 0 = 1
	MaxValueBytes int          // 0 = limits.DefaultMaxValue
	Logger        *slog.Logger // nil = slog.Default()
	// TTLGuard is how close to its server-side expiry a TTL'd value may be
	// and still be the base of a conditional write; nearer than that, the
	// write waits for the server's expiry marker and conditions on it
	// (docs/CORRECTNESS.md, "TTL instants"). 0 = DefaultTTLGuard.
	TTLGuard time.Duration
	// EventConn publishes watch events (latchkey.kv.watch). It must be a
	// connection of its own whose user may publish only to _INBOX.>, so a
	// watch's deliver subject can never make storage write to $JS.API or
	// $KV. nil: this instance serves no watches (its shards' watch
	// requests go to instances that do).
	EventConn *nats.Conn
	// Unsafe switches off safety checks. Only tests set it, to prove that
	// the tests and `latchkey check` catch the bugs the checks prevent.
	Unsafe Unsafe
}

// Unsafe names the safety checks a test can switch off. Never set in a
// deployment: each one re-opens a bug that lost acknowledged writes or let
// a stale token through.
type Unsafe struct {
	// NoTTLGuard conditions writes on TTL'd values however close their
	// expiry is, so the server's expiry marker can swallow an acked write.
	NoTTLGuard bool
	// AllowFencedTTL lets an unfenced put with ttl_ms land on a key that
	// carries fences; its expiry then erases them.
	AllowFencedTTL bool
	// NoFenceBounds skips the too_many_fences and unknown_token checks.
	NoFenceBounds bool
}

// Server is a running storage instance.
type Server struct {
	svc    *service.Service
	shards []*shard
	wctl   *watchControl
	log    *slog.Logger
}

// ErrConfig is returned by Start for an unusable Config.
var ErrConfig = errors.New("storage: bad config")

var shardID = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// Start creates or opens the bucket of every shard in cfg, loads each
// shard's view up to the stream's current end, and then registers the
// micro service "latchkey-storage". It returns when the instance is ready
// to serve.
func Start(ctx context.Context, nc *nats.Conn, cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	if cfg.MaxValueBytes <= 0 {
		cfg.MaxValueBytes = limits.DefaultMaxValue
	}
	if err := limits.CheckMaxValue(cfg.MaxValueBytes, nc.MaxPayload()); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	if len(cfg.Shards) == 0 {
		return nil, fmt.Errorf("%w: no shards to serve", ErrConfig)
	}
	seen := map[string]bool{}
	for _, id := range cfg.Shards {
		if !shardID.MatchString(id) {
			return nil, fmt.Errorf("%w: shard id %q must match %s", ErrConfig, id, shardID)
		}
		if seen[id] {
			return nil, fmt.Errorf("%w: shard id %q listed twice", ErrConfig, id)
		}
		seen[id] = true
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	subj := subjects.New(cfg.Prefix)
	if cfg.TTLGuard <= 0 {
		cfg.TTLGuard = DefaultTTLGuard
	}
	s := &Server{log: cfg.Logger}
	tokens := newTokenBound(js, subj.LockBucket())
	var eps []service.Endpoint
	for _, id := range cfg.Shards {
		sh, err := openShard(ctx, nc, js, id, subj.ShardBucket(id), cfg, tokens)
		if err != nil {
			s.closeShards()
			return nil, err
		}
		s.shards = append(s.shards, sh)
		eps = append(eps, sh.endpoints(subj)...)
		if cfg.EventConn != nil {
			eps = append(eps, sh.watchEndpoint(subj))
		}
	}
	if cfg.EventConn != nil {
		if s.wctl, err = startWatchControl(nc, subj, s.shards); err != nil {
			s.closeShards()
			return nil, err
		}
	}
	s.svc, err = service.Start(nc, service.Config{
		Name:        ServiceName,
		Version:     Version,
		Description: "latchkey shard storage",
		Metadata:    map[string]string{"shards": strings.Join(cfg.Shards, ",")},
		Logger:      cfg.Logger,
	}, eps...)
	if err != nil {
		s.wctl.stop()
		s.closeShards()
		return nil, err
	}
	cfg.Logger.Info("storage ready", "shards", cfg.Shards, "replicas", cfg.Replicas)
	return s, nil
}

// Stop stops taking requests, answers those in flight (up to ctx), and
// stops the views' consumers. The data stays in JetStream.
func (s *Server) Stop(ctx context.Context) error {
	err := s.svc.Stop(ctx)
	s.wctl.stop()
	s.closeShards()
	return err
}

func (s *Server) closeShards() {
	for _, sh := range s.shards {
		sh.close()
	}
}

// DefaultTTLGuard is the TTL guard when Config.TTLGuard is 0.
const DefaultTTLGuard = 250 * time.Millisecond
