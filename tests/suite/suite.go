// Package suite starts latchkey's services in-process for end-to-end tests:
// the same wiring as `latchkey dev`, against any NATS connection.
package suite

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
)

// Options configures a suite.
type Options struct {
	Prefix   string
	Shards   int // default 3
	Replicas int // default 1; 3 on a cluster
	// EventConn publishes watch events; nil = a second connection to the
	// same server, closed with the suite.
	EventConn *nats.Conn
}

// Suite is a running set of services.
type Suite struct {
	Storage *storage.Server
	Router  *router.Server
	Locker  *locker.Server
	stops   []func(context.Context) error
}

// ShardIDs returns "0".."n-1".
func ShardIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// Start starts one storage instance serving every shard, one router and
// one locker.
func Start(ctx context.Context, nc *nats.Conn, o Options) (*Suite, error) {
	if o.Shards == 0 {
		o.Shards = 3
	}
	if o.Replicas == 0 {
		o.Replicas = 1
	}
	log := slog.New(slog.NewTextHandler(discard{}, nil))
	s := &Suite{}
	if o.EventConn == nil {
		ev, err := nats.Connect(nc.ConnectedUrl(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			return nil, fmt.Errorf("event connection: %w", err)
		}
		s.stops = append(s.stops, func(context.Context) error { ev.Close(); return nil })
		o.EventConn = ev
	}
	st, err := storage.Start(ctx, nc, storage.Config{Prefix: o.Prefix, Shards: ShardIDs(o.Shards), Replicas: o.Replicas, EventConn: o.EventConn, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	s.Storage = st
	s.stops = append(s.stops, st.Stop)
	rt, err := router.Start(ctx, nc, router.Config{Prefix: o.Prefix, Shards: o.Shards, Replicas: o.Replicas, Logger: log})
	if err != nil {
		s.Stop(ctx)
		return nil, fmt.Errorf("router: %w", err)
	}
	s.Router = rt
	s.stops = append(s.stops, rt.Stop)
	lk, err := locker.Start(ctx, nc, locker.Config{Prefix: o.Prefix, Replicas: o.Replicas, Logger: log})
	if err != nil {
		s.Stop(ctx)
		return nil, fmt.Errorf("locker: %w", err)
	}
	s.Locker = lk
	s.stops = append(s.stops, lk.Stop)
	return s, nil
}

// Stop stops the services in reverse start order.
func (s *Suite) Stop(ctx context.Context) {
	for i := len(s.stops) - 1; i >= 0; i-- {
		_ = s.stops[i](ctx)
	}
}

// New starts a suite for a test and stops it at cleanup.
func New(t testing.TB, nc *nats.Conn, o Options) *Suite {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Start(ctx, nc, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s.Stop(ctx)
	})
	return s
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
