// Package suite starts latchkey in one process: the storage, router and
// locker services wired as a deployment wires them, on a NATS connection
// the caller brings (StartServices, StartInstance) or on an embedded NATS
// server it starts itself (StartServer). `latchkey dev`, `latchkey bench`,
// the in-process checker (check/inproc), the end-to-end tests (tests/suite)
// and the client's examples all start the suite here, so a change of how
// the services are wired is made once. It links no test code.
package suite

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"

	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
)

// Options configures the services of a suite.
type Options struct {
	Prefix string // subject prefix; "" = latchkey
	Shards int    // number of shards, "0".."N-1"; 0 = 3
	// StorageShards, if above Shards, is how many shard ids storage serves
	// ("0".."StorageShards-1"): the extra ones are ready for a move that
	// adds them (latchkey check --reshard).
	StorageShards int
	Replicas      int // JetStream replicas of every bucket; 0 = 1 (3 on a cluster)
	// Logger receives the services' logs, each with a component attribute;
	// nil discards them.
	Logger *slog.Logger
	// StorageUnsafe and LockerUnsafe switch safety checks off; only the
	// checker's self-test sets them, to plant the bugs those checks prevent.
	StorageUnsafe storage.Unsafe
	LockerUnsafe  locker.Unsafe
}

func (o Options) withDefaults() Options {
	if o.Shards <= 0 {
		o.Shards = 3
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// ShardIDs returns the shard ids "0".."n-1".
func ShardIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}

// Kind is one of the three services.
type Kind string

// The services, in the order a suite starts them: storage first, because
// the router's first requests go to shards.
const (
	Storage Kind = "storage"
	Router  Kind = "router"
	Locker  Kind = "locker"
)

// Kinds lists the services in start order.
var Kinds = []Kind{Storage, Router, Locker}

// Instance is one running service instance.
type Instance struct {
	Kind    Kind
	Storage *storage.Server // set when Kind is Storage
	Router  *router.Server  // set when Kind is Router
	Locker  *locker.Server  // set when Kind is Locker
	stop    func(context.Context) error
}

// Stop stops the instance; in-flight requests finish first (within ctx).
func (in *Instance) Stop(ctx context.Context) error { return in.stop(ctx) }

// StartInstance starts one instance of kind on nc. events is a storage
// instance's watch event connection (storage.Config.EventConn); with nil
// the instance serves no watches. attrs are added to its logger's
// component attribute (e.g. "instance", 1).
func StartInstance(ctx context.Context, kind Kind, nc, events *nats.Conn, o Options, attrs ...any) (*Instance, error) {
	o = o.withDefaults()
	log := o.Logger.With(append([]any{"component", string(kind)}, attrs...)...)
	in := &Instance{Kind: kind}
	var err error
	switch kind {
	case Storage:
		in.Storage, err = storage.Start(ctx, nc, storage.Config{Prefix: o.Prefix, Shards: ShardIDs(max(o.Shards, o.StorageShards)), Replicas: o.Replicas,
			EventConn: events, Logger: log, Unsafe: o.StorageUnsafe})
		if err == nil {
			in.stop = in.Storage.Stop
		}
	case Router:
		in.Router, err = router.Start(ctx, nc, router.Config{Prefix: o.Prefix, Shards: o.Shards, Replicas: o.Replicas, Logger: log})
		if err == nil {
			in.stop = in.Router.Stop
		}
	case Locker:
		in.Locker, err = locker.Start(ctx, nc, locker.Config{Prefix: o.Prefix, Replicas: o.Replicas, Logger: log, Unsafe: o.LockerUnsafe})
		if err == nil {
			in.stop = in.Locker.Stop
		}
	default:
		return nil, fmt.Errorf("suite: no service %q", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", kind, err)
	}
	return in, nil
}

// Services is one instance of each service on one connection.
type Services struct {
	Storage *storage.Server
	Router  *router.Server
	Locker  *locker.Server
	log     *slog.Logger
	started []*Instance
}

// StartServices starts storage (serving every shard, its watch events on
// events), a router and a locker on nc. On failure it stops what it
// started.
func StartServices(ctx context.Context, nc, events *nats.Conn, o Options) (*Services, error) {
	o = o.withDefaults()
	s := &Services{log: o.Logger}
	for _, kind := range Kinds {
		if kind == Storage {
			o.Logger.Info("starting storage", "shards", o.Shards)
		} else {
			o.Logger.Info("starting " + string(kind))
		}
		in, err := StartInstance(ctx, kind, nc, events, o)
		if err != nil {
			s.Stop(ctx)
			return nil, err
		}
		s.started = append(s.started, in)
	}
	s.Storage, s.Router, s.Locker = s.started[0].Storage, s.started[1].Router, s.started[2].Locker
	return s, nil
}

// Stop stops the services in reverse start order and returns what failed.
func (s *Services) Stop(ctx context.Context) error {
	var errs []error
	for i := len(s.started) - 1; i >= 0; i-- {
		in := s.started[i]
		s.log.Info("stopping " + string(in.Kind))
		if err := in.Stop(ctx); err != nil {
			s.log.Warn("stopping "+string(in.Kind), "err", err)
			errs = append(errs, fmt.Errorf("%s: %w", in.Kind, err))
		}
	}
	s.started = nil
	return errors.Join(errs...)
}
