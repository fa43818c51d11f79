// Package inproc runs a whole latchkey deployment inside the process, for
// `latchkey check --in-process` and the checker's CI test: a three-node
// JetStream cluster (kit/natsembed) with R3 buckets, two storage instances
// serving every shard, two routers and two lockers, each instance on its
// own NATS connection. A Deployment is a check.Injector: it kills and
// restarts NATS nodes (a stream leader too) and restarts service
// instances.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natsembed"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/latchkey/latchkey/suite"
	"github.com/nats-io/nats.go"
)

// Fault kinds this injector causes.
const (
	KillNode         = "kill-node"          // Target: node index
	KillStreamLeader = "kill-stream-leader" // Target: shard; the node leading its stream
	KillLockLeader   = "kill-lock-leader"   // the node leading the lock bucket's stream
	RestartStorage   = "restart-storage"    // Target: storage instance
	RestartRouter    = "restart-router"     // Target: router instance
	RestartLocker    = "restart-locker"     // Target: locker instance
)

// Options configures a deployment.
type Options struct {
	Dir    string // JetStream data; required
	Prefix string // subject prefix; "" = latchkey
	Shards int    // default 3
	// SpareShards more shard ids ("Shards".."Shards+SpareShards-1") are
	// served by every storage instance but not in the map: a move
	// (latchkey check --reshard) may add them.
	SpareShards int
	Instances   int // of each service; default 2
	Logger      *slog.Logger
	// ClientTimeout is the default timeout of the clients Connect makes.
	ClientTimeout time.Duration
	// StorageUnsafe and LockerUnsafe switch safety checks of every storage
	// and locker instance off: only the checker's self-test sets them, to
	// plant the bugs those checks prevent and prove the checker sees them.
	StorageUnsafe storage.Unsafe
	LockerUnsafe  locker.Unsafe
}

// Deployment is a running in-process deployment.
type Deployment struct {
	o       Options
	cluster *natsembed.Cluster

	mu      sync.Mutex
	svcs    map[string][]*instance // by kind: storage, router, locker
	killed  map[check.Fault]int    // node killed by a kill-*-leader fault
	clients []*nats.Conn
}

type instance struct {
	nc   *nats.Conn
	stop func(context.Context) error
}

// Start starts the cluster and the services.
func Start(ctx context.Context, o Options) (*Deployment, error) {
	if o.Shards <= 0 {
		o.Shards = 3
	}
	if o.Instances <= 0 {
		o.Instances = 2
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.ClientTimeout <= 0 {
		o.ClientTimeout = 2 * time.Second
	}
	c, err := natsembed.StartCluster(3, o.Dir)
	if err != nil {
		return nil, err
	}
	d := &Deployment{o: o, cluster: c, svcs: map[string][]*instance{}, killed: map[check.Fault]int{}}
	for _, kind := range []string{"storage", "router", "locker"} {
		for i := 0; i < o.Instances; i++ {
			in, err := d.startRetry(ctx, kind, i)
			if err != nil {
				d.Close()
				return nil, fmt.Errorf("%s %d: %w", kind, i, err)
			}
			d.svcs[kind] = append(d.svcs[kind], in)
		}
	}
	return d, nil
}

// urls lists every node's client URL, node i first, so connections spread
// over the nodes and fail over to the others.
func (d *Deployment) urls(i int) string {
	var all []string
	for _, s := range d.cluster.Nodes {
		all = append(all, s.ClientURL())
	}
	n := len(all)
	var out []string
	for k := range n {
		out = append(out, all[(i+k)%n])
	}
	return strings.Join(out, ",")
}

func (d *Deployment) connect(i int, name string) (*nats.Conn, error) {
	return nats.Connect(d.urls(i), nats.Name(name), nats.DontRandomize(),
		nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
}

func (d *Deployment) start(ctx context.Context, kind string, i int) (*instance, error) {
	nc, err := d.connect(i, fmt.Sprintf("%s-%d", kind, i))
	if err != nil {
		return nil, err
	}
	// Watch events go out on a connection of their own, as in a
	// deployment (services/storage Config.EventConn); without it the
	// instance serves no watches.
	var ev *nats.Conn
	if suite.Kind(kind) == suite.Storage {
		if ev, err = d.connect(i, fmt.Sprintf("%s-%d-events", kind, i)); err != nil {
			nc.Close()
			return nil, err
		}
	}
	in, err := suite.StartInstance(ctx, suite.Kind(kind), nc, ev, suite.Options{Prefix: d.o.Prefix, Shards: d.o.Shards,
		StorageShards: d.o.Shards + d.o.SpareShards, Replicas: 3,
		Logger: d.o.Logger, StorageUnsafe: d.o.StorageUnsafe, LockerUnsafe: d.o.LockerUnsafe}, "instance", i)
	if err != nil {
		if ev != nil {
			ev.Close()
		}
		nc.Close()
		return nil, err
	}
	stop := in.Stop
	if ev != nil {
		stop = func(ctx context.Context) error {
			defer ev.Close()
			return in.Stop(ctx)
		}
	}
	return &instance{nc: nc, stop: stop}, nil
}

// Connect returns a client on its own connection, to node i%3 first.
func (d *Deployment) Connect(_ context.Context, i int) (*client.Client, error) {
	nc, err := d.connect(i, fmt.Sprintf("check-client-%d", i))
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	d.clients = append(d.clients, nc)
	d.mu.Unlock()
	return client.New(nc, client.WithPrefix(d.o.Prefix), client.WithTimeout(d.o.ClientTimeout)), nil
}

// URL is a client URL list of the cluster.
func (d *Deployment) URL() string { return d.urls(0) }

// Faults lists every fault the deployment can inject.
func (d *Deployment) Faults() []check.Fault {
	var fs []check.Fault
	for i := range d.cluster.Nodes {
		fs = append(fs, check.Fault{Kind: KillNode, Target: i})
	}
	for s := 0; s < d.o.Shards; s++ {
		fs = append(fs, check.Fault{Kind: KillStreamLeader, Target: s})
	}
	fs = append(fs, check.Fault{Kind: KillLockLeader})
	for i := 0; i < d.o.Instances; i++ {
		fs = append(fs, check.Fault{Kind: RestartStorage, Target: i},
			check.Fault{Kind: RestartRouter, Target: i},
			check.Fault{Kind: RestartLocker, Target: i})
	}
	return fs
}

func svcKind(f check.Fault) string {
	return map[string]string{RestartStorage: "storage", RestartRouter: "router", RestartLocker: "locker"}[f.Kind]
}

// Inject causes f.
func (d *Deployment) Inject(ctx context.Context, f check.Fault) error {
	subj := subjects.New(d.o.Prefix)
	switch f.Kind {
	case KillNode:
		if f.Target < 0 || f.Target >= len(d.cluster.Nodes) {
			return fmt.Errorf("no node %d", f.Target)
		}
		d.cluster.Kill(f.Target)
		return nil
	case KillStreamLeader, KillLockLeader:
		stream := "KV_" + subj.LockBucket()
		if f.Kind == KillStreamLeader {
			stream = "KV_" + subj.ShardBucket(strconv.Itoa(f.Target))
		}
		// Right after an earlier fault the stream may still be electing
		// its leader: wait for one.
		n := d.cluster.StreamLeader(stream)
		for deadline := time.Now().Add(10 * time.Second); n < 0 && time.Now().Before(deadline); n = d.cluster.StreamLeader(stream) {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
		if n < 0 {
			return fmt.Errorf("stream %s has no leader to kill", stream)
		}
		d.mu.Lock()
		d.killed[f] = n
		d.mu.Unlock()
		d.cluster.Kill(n)
		return nil
	}
	kind := svcKind(f)
	if kind == "" {
		return fmt.Errorf("unknown fault %s", f)
	}
	d.mu.Lock()
	list := d.svcs[kind]
	if f.Target < 0 || f.Target >= len(list) || list[f.Target] == nil {
		d.mu.Unlock()
		return fmt.Errorf("no running %s instance %d", kind, f.Target)
	}
	in := list[f.Target]
	list[f.Target] = nil
	d.mu.Unlock()
	// A restart as a supervisor does it: stop (in-flight requests finish),
	// close the connection, start a fresh instance on a new one at Heal.
	err := in.stop(ctx)
	in.nc.Close()
	return err
}

// Heal undoes f.
func (d *Deployment) Heal(ctx context.Context, f check.Fault) error {
	switch f.Kind {
	case KillNode, KillStreamLeader, KillLockLeader:
		n := f.Target
		if f.Kind != KillNode {
			d.mu.Lock()
			var ok bool
			n, ok = d.killed[f]
			delete(d.killed, f)
			d.mu.Unlock()
			if !ok {
				return nil // the inject found no leader: nothing to heal
			}
		}
		if d.cluster.Nodes[n].Running() {
			return nil
		}
		return d.cluster.Restart(n)
	}
	kind := svcKind(f)
	d.mu.Lock()
	running := d.svcs[kind][f.Target] != nil
	d.mu.Unlock()
	if running {
		return nil
	}
	in, err := d.startRetry(ctx, kind, f.Target)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.svcs[kind][f.Target] = in
	d.mu.Unlock()
	return nil
}

// startRetry starts an instance, retrying for a while as a supervisor
// would: JetStream may still be electing leaders (at start-up, or after
// an earlier fault).
func (d *Deployment) startRetry(ctx context.Context, kind string, i int) (*instance, error) {
	var err error
	for attempt := 0; attempt < 40; attempt++ {
		var in *instance
		if in, err = d.start(ctx, kind, i); err == nil {
			return in, nil
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(err, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil, err
}

// Close stops the services and the cluster.
func (d *Deployment) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, nc := range d.clients {
		nc.Close()
	}
	for _, kind := range []string{"locker", "router", "storage"} {
		for _, in := range d.svcs[kind] {
			if in != nil {
				_ = in.stop(ctx)
				in.nc.Close()
			}
		}
	}
	d.cluster.Shutdown()
}
