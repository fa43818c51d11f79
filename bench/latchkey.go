package bench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/suite"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Durability settings of JetStream, as reports print them.
const (
	DurabilityJSDefault = "JetStream file store, fsync every 2 min (default sync_interval)"
	DurabilityJSAlways  = "JetStream sync_interval always (fsync before every ack)"
	DurabilityExternal  = "as configured on the target NATS server"
	// On a 3-node cluster every bucket is R3: a write is acknowledged once
	// a quorum (2 of 3) has it.
	DurabilityJSClusterDefault = "JetStream 3-node cluster, R3 (quorum ack), fsync every 2 min (default sync_interval)"
	DurabilityJSClusterAlways  = "JetStream 3-node cluster, R3 (quorum ack), sync_interval always (Raft WAL fsync before every ack, group commit)"
)

// DeploymentConfig configures an in-process deployment.
type DeploymentConfig struct {
	Dir        string // JetStream data; required
	Shards     int    // default 3
	SyncAlways bool
	Prefix     string // default "latchkey"
	Logger     *slog.Logger
	// Nodes is 1 (one embedded server, R1 buckets: the default) or 3 (a
	// 3-node embedded cluster, R3 buckets, one set of services per node).
	Nodes int
}

// Deployment is a NATS server with JetStream plus the storage, router and
// locker services, all in this process, as `latchkey dev` runs them
// (package suite).
type Deployment struct {
	Server     *server.Server // on a cluster, node 0
	URL        string         // on a cluster, every node's URL, comma separated
	Durability string
	// Replicas of every bucket: 1, or 3 on a cluster.
	Replicas int
	// ServiceConn is the in-process connection the services share (on a
	// cluster, node 0's services).
	ServiceConn *nats.Conn
	suite       *suite.Deployment
	cluster     *clusterDeployment
}

// StartDeployment starts NATS and the three services and returns once
// they serve.
func StartDeployment(ctx context.Context, cfg DeploymentConfig) (*Deployment, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	switch cfg.Nodes {
	case 0, 1:
	case 3:
		return startClusterDeployment(ctx, cfg)
	default:
		return nil, fmt.Errorf("bench: %d nodes: want 1 or 3", cfg.Nodes)
	}
	sd, err := suite.StartServer(ctx, suite.ServerConfig{
		Options: suite.Options{Prefix: cfg.Prefix, Shards: cfg.Shards, Logger: cfg.Logger},
		Dir:     cfg.Dir, Name: "latchkey-bench", SyncAlways: cfg.SyncAlways,
	})
	if err != nil {
		return nil, err
	}
	d := &Deployment{Server: sd.Server, URL: sd.URL, Durability: DurabilityJSDefault, Replicas: 1, ServiceConn: sd.Conn, suite: sd}
	if cfg.SyncAlways {
		d.Durability = DurabilityJSAlways
	}
	return d, nil
}

// Stop stops the services, then the connection, then the server.
func (d *Deployment) Stop(ctx context.Context) {
	if d.cluster != nil {
		d.cluster.stop(ctx)
		return
	}
	d.suite.Stop(ctx)
}

// connPool opens n client connections to url; calls spread over them.
// url may list several servers (a cluster): connection i goes to the i-th
// (mod their number) first, so the clients spread evenly over the nodes
// instead of wherever nats.go's random pick puts them.
func connPool(url, name string, n int) ([]*nats.Conn, error) {
	urls := strings.Split(url, ",")
	conns := make([]*nats.Conn, 0, n)
	for i := 0; i < max(n, 1); i++ {
		rotated := append(slices.Clone(urls[i%len(urls):]), urls[:i%len(urls)]...)
		nc, err := nats.Connect(strings.Join(rotated, ","), nats.Name(name), nats.MaxReconnects(-1), nats.DontRandomize())
		if err != nil {
			for _, c := range conns {
				c.Close()
			}
			return nil, fmt.Errorf("connecting to %s: %w", url, err)
		}
		conns = append(conns, nc)
	}
	return conns, nil
}

// Latchkey is the System of a latchkey deployment reached over NATS.
type Latchkey struct {
	durability string
	conns      []*nats.Conn
	clients    []*client.Client
	next       atomic.Uint32
}

// NewLatchkey connects conns client connections to the deployment at url.
func NewLatchkey(url, prefix, durability string, conns int) (*Latchkey, error) {
	pool, err := connPool(url, "latchkey-bench", conns)
	if err != nil {
		return nil, err
	}
	l := &Latchkey{durability: durability, conns: pool}
	for _, nc := range pool {
		opts := []client.Option{client.WithTimeout(10 * time.Second)}
		if prefix != "" {
			opts = append(opts, client.WithPrefix(prefix))
		}
		l.clients = append(l.clients, client.New(nc, opts...))
	}
	return l, nil
}

func (l *Latchkey) c() *client.Client {
	return l.clients[int(l.next.Add(1))%len(l.clients)]
}

// Name implements System.
func (l *Latchkey) Name() string { return "latchkey" }

// Durability implements System.
func (l *Latchkey) Durability() string { return l.durability }

// Get implements System.
func (l *Latchkey) Get(ctx context.Context, key string, stale bool) error {
	var opts []client.GetOption
	if stale {
		opts = append(opts, client.Stale())
	}
	_, err := l.c().Get(ctx, key, opts...)
	if errors.Is(err, client.ErrNotFound) {
		return nil
	}
	return err
}

// Put implements System.
func (l *Latchkey) Put(ctx context.Context, key string, value []byte) error {
	_, err := l.c().Put(ctx, key, value)
	return err
}

// CAS implements System.
func (l *Latchkey) CAS(ctx context.Context, key string, value []byte, rev *uint64) error {
	r, err := l.c().Put(ctx, key, value, client.IfRevision(*rev))
	if err != nil {
		return err
	}
	*rev = r
	return nil
}

// Scan implements System.
func (l *Latchkey) Scan(ctx context.Context, prefix, after string, limit int) (int, error) {
	p, err := l.c().Scan(ctx, prefix, client.After(after), client.Limit(limit))
	if err != nil {
		return 0, err
	}
	return len(p.Items), nil
}

// Acquire implements System. Leases are 10 s without keep-alive: every
// benchmark holder releases long before.
func (l *Latchkey) Acquire(ctx context.Context, name string, wait bool) (func(context.Context) error, error) {
	opts := []client.LockOption{client.WithOwner("bench"), client.WithLeaseTTL(10 * time.Second), client.WithoutKeepAlive()}
	if wait {
		opts = append(opts, client.WithWait(time.Minute))
	}
	lk, err := l.c().Acquire(ctx, name, opts...)
	if err != nil {
		return nil, err
	}
	return lk.Release, nil
}

// Close implements System.
func (l *Latchkey) Close() error {
	for _, nc := range l.conns {
		nc.Close()
	}
	return nil
}
