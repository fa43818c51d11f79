package bench

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/latchkey/latchkey/kit/tcpproxy"
)

// DurabilityEtcd is etcd's only mode: the WAL is fsynced before a write is
// acknowledged (many writes share one fsync).
const DurabilityEtcd = "etcd WAL fsync before every ack (group commit)"

// DurabilityEtcdCluster is a 3-member etcd: a write is acknowledged once a
// quorum (2 of 3) has fsynced it to its WAL (many writes share one fsync).
const DurabilityEtcdCluster = "etcd 3 members, WAL fsync on a quorum before every ack (group commit)"

// Etcd is an etcd server (one member, or a cluster of members) embedded in
// this process, and the System that talks to it over loopback gRPC.
type Etcd struct {
	members    []*embed.Etcd
	durability string
	clients    []*clientv3.Client
	next       atomic.Uint32
	sessions   chan *concurrency.Session
}

// StartEtcd starts an etcd member with its data in dir and connects conns
// clients to it.
func StartEtcd(ctx context.Context, dir string, conns int) (*Etcd, error) {
	return StartEtcdCluster(ctx, dir, 1, conns)
}

// StartEtcdCluster starts members etcd members (1 or 3) in this process on
// loopback ports, their data under dir, and connects conns clients, client
// i to member i%members, so the clients spread over the members as they
// would over a real cluster (a follower forwards writes and asks the
// leader for linearizable reads, as etcd does).
func StartEtcdCluster(ctx context.Context, dir string, members, conns int) (*Etcd, error) {
	if members != 1 && members != 3 {
		return nil, fmt.Errorf("etcd: %d members: want 1 or 3", members)
	}
	var cfgs []*embed.Config
	var peers []string
	for i := 0; i < members; i++ {
		cfg := embed.NewConfig()
		cfg.Dir = dir
		if members > 1 {
			cfg.Name = fmt.Sprintf("m%d", i)
			cfg.Dir = filepath.Join(dir, cfg.Name)
			cfg.InitialClusterToken = "latchkey-bench"
		}
		cfg.LogLevel = "error"
		// etcd logs its own shutdown as errors; the benchmark reports failures itself.
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cport, err := tcpproxy.FreePort()
		if err != nil {
			return nil, err
		}
		pport, err := tcpproxy.FreePort()
		if err != nil {
			return nil, err
		}
		cu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(cport))
		pu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(pport))
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
		cfgs = append(cfgs, cfg)
		peers = append(peers, cfg.Name+"="+pu.String())
	}
	x := &Etcd{durability: DurabilityEtcd, sessions: make(chan *concurrency.Session, 4096)}
	if members > 1 {
		x.durability = DurabilityEtcdCluster
	}
	// Every member starts before any waits: a member is ready only once a
	// quorum of its peers is up.
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(peers, ",")
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			_ = x.Close()
			return nil, fmt.Errorf("starting etcd: %w", err)
		}
		x.members = append(x.members, e)
	}
	for _, e := range x.members {
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			_ = x.Close()
			return nil, errors.New("etcd was not ready in 30s")
		case <-ctx.Done():
			_ = x.Close()
			return nil, ctx.Err()
		}
	}
	for i := 0; i < max(conns, 1); i++ {
		ep := cfgs[i%members].AdvertiseClientUrls[0].String()
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 5 * time.Second})
		if err != nil {
			_ = x.Close()
			return nil, err
		}
		x.clients = append(x.clients, c)
	}
	return x, nil
}

func (x *Etcd) c() *clientv3.Client { return x.clients[int(x.next.Add(1))%len(x.clients)] }

// Name implements System.
func (x *Etcd) Name() string { return "etcd" }

// Durability implements System.
func (x *Etcd) Durability() string { return x.durability }

// Get implements System: linearizable by default (ReadIndex), serializable
// (answered by the member from its own state) when stale.
func (x *Etcd) Get(ctx context.Context, key string, stale bool) error {
	var opts []clientv3.OpOption
	if stale {
		opts = append(opts, clientv3.WithSerializable())
	}
	_, err := x.c().Get(ctx, key, opts...)
	return err
}

// Put implements System.
func (x *Etcd) Put(ctx context.Context, key string, value []byte) error {
	_, err := x.c().Put(ctx, key, string(value))
	return err
}

// CAS implements System: a transaction on the key's mod revision.
func (x *Etcd) CAS(ctx context.Context, key string, value []byte, rev *uint64) error {
	r, err := x.c().Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", int64(*rev))).
		Then(clientv3.OpPut(key, string(value))).Commit()
	if err != nil {
		return err
	}
	if !r.Succeeded {
		return fmt.Errorf("etcd cas on %s: revision moved", key)
	}
	*rev = uint64(r.Header.Revision)
	return nil
}

// Scan implements System: a linearizable range read of one page.
func (x *Etcd) Scan(ctx context.Context, prefix, after string, limit int) (int, error) {
	r, err := x.c().Get(ctx, after+"\x00", clientv3.WithRange(clientv3.GetPrefixRangeEnd(prefix)), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return 0, err
	}
	return len(r.Kvs), nil
}

// Acquire implements System with concurrency.Mutex. Sessions (each one a
// lease kept alive) are reused across acquisitions, as a long-lived
// client would hold one.
func (x *Etcd) Acquire(ctx context.Context, name string, wait bool) (func(context.Context) error, error) {
	var s *concurrency.Session
	select {
	case s = <-x.sessions:
	default:
		var err error
		if s, err = concurrency.NewSession(x.c(), concurrency.WithTTL(10)); err != nil {
			return nil, err
		}
	}
	m := concurrency.NewMutex(s, "/locks/"+name)
	var err error
	if wait {
		err = m.Lock(ctx)
	} else {
		err = m.TryLock(ctx)
	}
	if err != nil {
		x.putSession(s)
		return nil, err
	}
	return func(ctx context.Context) error {
		err := m.Unlock(ctx)
		x.putSession(s)
		return err
	}, nil
}

func (x *Etcd) putSession(s *concurrency.Session) {
	select {
	case x.sessions <- s:
	default:
		_ = s.Close()
	}
}

// Close stops the clients and the member.
func (x *Etcd) Close() error {
	for {
		select {
		case s := <-x.sessions:
			_ = s.Close()
			continue
		default:
		}
		break
	}
	for _, c := range x.clients {
		_ = c.Close()
	}
	for _, e := range x.members {
		e.Close()
	}
	return nil
}
