// Package natstest is the test side of kit/natsembed: servers, clusters
// and connections that a test starts and its cleanup stops, a cluster
// whose routes can be cut (partitions), and probes of the server's timers
// (expiries, reads at a TTL's edge). Production code uses kit/natsembed;
// this package imports testing.
package natstest

import (
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configures an embedded server (natsembed.Options).
type Options = natsembed.Options

// Cluster is a three-node JetStream cluster on loopback (natsembed.Cluster).
type Cluster = natsembed.Cluster

// EventsUser is the user of the watch event connection (natsembed.EventsUser).
const EventsUser = natsembed.EventsUser

// Start runs one JetStream-enabled server (natsembed.Start); the caller
// stops it.
func Start(o Options) (*server.Server, error) { return natsembed.Start(o) }

// WatchUsers returns the users of a server with a watch event user
// (natsembed.WatchUsers).
func WatchUsers(password string) (users []*server.User, noAuthUser string) {
	return natsembed.WatchUsers(password)
}

// Server starts a single server for a test and stops it at cleanup.
func Server(t testing.TB) *server.Server {
	t.Helper()
	s, err := Start(Options{StoreDir: t.TempDir(), Name: "solo"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Connect opens a client connection that a test closes at cleanup.
func Connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// NewCluster starts a three-node cluster for a test.
func NewCluster(t testing.TB) *Cluster {
	t.Helper()
	c, err := natsembed.StartCluster(3, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Shutdown)
	return c
}
