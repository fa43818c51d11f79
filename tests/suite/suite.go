// Package suite is the test side of the in-process suite
// (github.com/latchkey/latchkey/suite): it starts the services on a test's
// NATS connection, with a watch event connection of their own, and stops
// them at the test's cleanup.
package suite

import (
	"context"
	"fmt"
	"testing"
	"time"

	lksuite "github.com/latchkey/latchkey/suite"
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

// Suite is a running set of services: Storage, Router and Locker.
type Suite struct {
	*lksuite.Services
	ownEvents *nats.Conn // the event connection Start made, if any
}

// ShardIDs returns "0".."n-1".
func ShardIDs(n int) []string { return lksuite.ShardIDs(n) }

// Start starts one storage instance serving every shard, one router and
// one locker on nc.
func Start(ctx context.Context, nc *nats.Conn, o Options) (*Suite, error) {
	s := &Suite{}
	ev := o.EventConn
	if ev == nil {
		var err error
		ev, err = nats.Connect(nc.ConnectedUrl(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
		if err != nil {
			return nil, fmt.Errorf("event connection: %w", err)
		}
		s.ownEvents = ev
	}
	svcs, err := lksuite.StartServices(ctx, nc, ev, lksuite.Options{Prefix: o.Prefix, Shards: o.Shards, Replicas: o.Replicas})
	if err != nil {
		if s.ownEvents != nil {
			s.ownEvents.Close()
		}
		return nil, err
	}
	s.Services = svcs
	return s, nil
}

// Stop stops the services in reverse start order, then the event
// connection Start made.
func (s *Suite) Stop(ctx context.Context) {
	_ = s.Services.Stop(ctx)
	if s.ownEvents != nil {
		s.ownEvents.Close()
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
