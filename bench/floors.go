package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Floor workload names: the raw NATS and JetStream paths under latchkey's.
const (
	FEcho         = "floor-echo"          // 1-hop request-reply
	FRelay        = "floor-relay"         // 2-hop: a relay answering from a goroutine (router shape)
	FForward      = "floor-forward"       // 2-hop: the relay forwards with the caller's reply subject
	FPut          = "floor-put"           // raw JetStream KV put
	FLeaderGet    = "floor-leader-get"    // $JS.API.STREAM.MSG.GET last_by_subj
	FCAS          = "floor-cas"           // KV update with expected revision
	FCreateDelete = "floor-create-delete" // KV create + delete pair
)

// ExtraFloors are measured beside a workload for reference, without a
// ratio: what the workload's path could cost if built differently.
var ExtraFloors = map[string][]string{
	WGetStale: {FEcho, FForward},
}

// FloorOf maps a latchkey workload to the floor its ratio is taken
// against ("" = none).
var FloorOf = map[string]string{
	WGet:      FLeaderGet,
	WGetStale: FRelay,
	WPut:      FPut,
	WCAS:      FCAS,
	WLock:     FCreateDelete,
}

const (
	floorBucket = "latchkey_bench_floor"
	floorStream = "KV_" + floorBucket
	echoSubj    = "latchkey_bench.floor.echo"
	relaySubj   = "latchkey_bench.floor.relay"
	forwardSubj = "latchkey_bench.floor.forward"
)

// Floors runs the raw paths on one NATS server: the echo and relay
// responders sit on the service-side connection, the callers on the same
// client connection pool shape as the latchkey workloads.
type Floors struct {
	spec  Spec
	conns []*nats.Conn
	kvs   []jetstream.KeyValue
	subs  []*nats.Subscription
	js    jetstream.JetStream
	next  atomic.Uint32
}

// NewFloors prepares the floor workloads on the server at url. svc is the
// connection the responders use (the deployment's service connection, or
// a fresh one for an external target); the floor bucket is created with
// the layout of a storage shard (file storage, history 1, TTL markers) and
// replicas copies (0 = 1; 3 on a cluster, as latchkey's buckets there).
func NewFloors(ctx context.Context, url string, svc *nats.Conn, spec Spec, conns, replicas int) (*Floors, error) {
	pool, err := connPool(url, "latchkey-bench-floor", conns)
	if err != nil {
		return nil, err
	}
	f := &Floors{spec: spec, conns: pool}
	echo, err := svc.Subscribe(echoSubj, func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		f.Close()
		return nil, err
	}
	f.subs = append(f.subs, echo)
	relay, err := svc.Subscribe(relaySubj, func(m *nats.Msg) {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			r, err := svc.RequestWithContext(ctx, echoSubj, m.Data)
			if err != nil {
				_ = m.Respond(nil)
				return
			}
			_ = m.Respond(r.Data)
		}()
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	f.subs = append(f.subs, relay)
	// The echo answers the caller directly: one hop less on the way back.
	fwd, err := svc.Subscribe(forwardSubj, func(m *nats.Msg) {
		_ = svc.PublishMsg(&nats.Msg{Subject: echoSubj, Reply: m.Reply, Data: m.Data})
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	f.subs = append(f.subs, fwd)
	for i, nc := range pool {
		js, err := jetstream.New(nc)
		if err != nil {
			f.Close()
			return nil, err
		}
		var kv jetstream.KeyValue
		if i == 0 {
			f.js = js
			_ = js.DeleteKeyValue(ctx, floorBucket) // a leftover from an earlier run on an external server
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: floorBucket, History: 1, Storage: jetstream.FileStorage, LimitMarkerTTL: time.Minute, Replicas: max(replicas, 1)})
		} else {
			kv, err = js.KeyValue(ctx, floorBucket)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("floor bucket: %w", err)
		}
		f.kvs = append(f.kvs, kv)
	}
	return f, svc.Flush()
}

// Preload writes every key of the spec to the floor bucket, asynchronously.
func (f *Floors) Preload(ctx context.Context) error {
	js, err := jetstream.New(f.conns[0], jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		return err
	}
	v := value(rand.New(rand.NewSource(1)), f.spec.ValueSize)
	for i := 0; i < f.spec.Keys; i++ {
		if err := publishAsync(ctx, js, "$KV."+floorBucket+"."+floorKey(i), v); err != nil {
			return err
		}
	}
	select {
	case <-js.PublishAsyncComplete():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(5 * time.Minute):
		return errors.New("floor preload did not complete in 5 minutes")
	}
}

func floorKey(i int) string { return fmt.Sprintf("k%08d", i) }

func (f *Floors) pick() (*nats.Conn, jetstream.KeyValue) {
	i := int(f.next.Add(1)) % len(f.conns)
	return f.conns[i], f.kvs[i]
}

// Workload binds a floor name.
func (f *Floors) Workload(name string) (Workload, error) {
	w := Workload{Name: name}
	switch name {
	case FEcho, FRelay, FForward:
		subj := map[string]string{FEcho: echoSubj, FRelay: relaySubj, FForward: forwardSubj}[name]
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			v := value(rng, f.spec.ValueSize)
			return func(ctx context.Context) error {
				nc, _ := f.pick()
				_, err := nc.RequestWithContext(ctx, subj, v)
				return err
			}, nil
		}
	case FPut:
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick, v := chooser(f.spec, rng), value(rng, f.spec.ValueSize)
			return func(ctx context.Context) error {
				_, kv := f.pick()
				_, err := kv.Put(ctx, floorKey(pick()), v)
				return err
			}, nil
		}
	case FLeaderGet:
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick := chooser(f.spec, rng)
			return func(ctx context.Context) error {
				nc, _ := f.pick()
				_, _, err := jskv.LeaderGet(ctx, nc, floorStream, "$KV."+floorBucket+"."+floorKey(pick()))
				return err
			}, nil
		}
	case FCAS:
		w.NewClient = func(ctx context.Context, id int, rng *rand.Rand) (Op, error) {
			key := fmt.Sprintf("cas_%d_%d", id, rng.Int63())
			v := value(rng, f.spec.ValueSize)
			_, kv := f.pick()
			rev, err := kv.Create(ctx, key, v)
			if err != nil {
				return nil, err
			}
			return func(ctx context.Context) error {
				r, err := kv.Update(ctx, key, v, rev)
				if err == nil {
					rev = r
				}
				return err
			}, nil
		}
	case FCreateDelete:
		w.NewClient = func(_ context.Context, id int, rng *rand.Rand) (Op, error) {
			key := fmt.Sprintf("lock_%d_%d", id, rng.Int63())
			_, kv := f.pick()
			v := []byte("bench")
			return func(ctx context.Context) error {
				if _, err := kv.Create(ctx, key, v, jetstream.KeyTTL(10*time.Second)); err != nil {
					return err
				}
				return kv.Delete(ctx, key)
			}, nil
		}
	default:
		return Workload{}, fmt.Errorf("unknown floor %q", name)
	}
	return w, nil
}

// Close removes the responders and the floor bucket and closes the
// connections.
func (f *Floors) Close() {
	for _, s := range f.subs {
		_ = s.Unsubscribe()
	}
	if f.js != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = f.js.DeleteKeyValue(ctx, floorBucket)
		cancel()
	}
	for _, nc := range f.conns {
		nc.Close()
	}
}

// publishAsync is js.PublishAsync that waits out a full window (with
// sync_interval always the acks come slowly) instead of failing.
func publishAsync(ctx context.Context, js jetstream.JetStream, subj string, data []byte) error {
	for {
		_, err := js.PublishAsync(subj, data)
		if !errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
			return err
		}
		select {
		case <-js.PublishAsyncComplete():
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}
