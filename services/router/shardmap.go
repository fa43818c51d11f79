package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"time"

	"github.com/latchkey/latchkey/kit/jskv"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router/consistenthash"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// shardMapKey is the key of the shard map record in the meta bucket.
const shardMapKey = "shardmap"

// resyncEvery bounds how long a router can miss a shard map change when
// its watch silently stopped (watches have failed to resume after a
// reconnect: nats.go#1777).
const resyncEvery = 30 * time.Second

var (
	// ErrNoShardMap: Config.Shards is 0 and the deployment has no shard map
	// yet; start one router with Shards > 0 to create it.
	ErrNoShardMap = errors.New("the deployment has no shard map; start a router with --shards N to create one")
	// ErrMigrationNeeded: Config.Shards asks for a different shard set while
	// the current shards hold data. The error's message says how many.
	ErrMigrationNeeded = errors.New("changing the shard set of a deployment that holds data needs key migration")
)

type migrationError struct{ have, want int }

func (e *migrationError) Error() string {
	return fmt.Sprintf("the deployment has %d shards holding data; changing to %d moves keys: use `latchkey shards set` (latchkey.admin.shards.set), which moves them online", e.have, e.want)
}

func (e *migrationError) Is(target error) bool { return target == ErrMigrationNeeded }

// routing is one version of the shard map, swapped atomically as a whole.
type routing struct {
	epoch uint64
	hash  *consistenthash.Map
	// target is the set of the running or the last unfinished move: where
	// a key goes when its shard answers moved. nil when none.
	target *consistenthash.Map
	moving bool // a move is running (COPYING or HANDOVER)
	// seen identifies the record version (epoch and move) this routing
	// was built from, so a change of the move alone replaces it.
	seen string
	// watch is the sorted set of shards a watch covers (watch.go): the
	// map's, and while keys may sit on a move's new shards (it runs, or
	// an abort is giving them back) those too.
	watch []string
	// added holds the shards of watch the last move brought in: a resume
	// that has no cursor for one started before it joined, so its feed
	// starts from the stream's start. removed holds the shards the last
	// move took out of watch: a resume's cursor for one drains it.
	added, removed map[string]bool
	drains         *drainCache // drain points of removed shards (watch.go)
}

func routingOf(m *pb.ShardMap) *routing {
	r := &routing{epoch: m.Epoch, hash: consistenthash.New(m.Shards), seen: fmt.Sprint(m.Epoch),
		watch: slices.Sorted(slices.Values(m.Shards)), added: map[string]bool{}, removed: map[string]bool{},
		drains: &drainCache{pos: map[string]uint64{}}}
	mo := m.Move
	if mo != nil && (running(mo) || unfinished(mo)) && len(mo.ToShards) > 0 {
		r.target = consistenthash.New(mo.ToShards)
		r.moving = running(mo)
		r.seen = fmt.Sprint(m.Epoch, mo.ToShards, mo.State, mo.Returned)
		for _, id := range mo.ToShards {
			if !slices.Contains(r.watch, id) {
				r.watch = append(r.watch, id)
			}
		}
		slices.Sort(r.watch)
	}
	if mo != nil {
		for _, id := range r.watch {
			if !slices.Contains(mo.FromShards, id) {
				r.added[id] = true
			}
		}
		for _, id := range append(slices.Clone(mo.FromShards), mo.ToShards...) {
			if !slices.Contains(r.watch, id) {
				r.removed[id] = true
			}
		}
	}
	return r
}

// openMeta opens the meta bucket, creating it when absent and retrying
// while a forming cluster cannot place it.
func openMeta(ctx context.Context, js jetstream.JetStream, bucket string, replicas int, log *slog.Logger) (jetstream.KeyValue, error) {
	kv, err := jskv.EnsureBucket(ctx, js, jetstream.KeyValueConfig{
		Bucket:      bucket,
		Description: "latchkey shard map",
		History:     1,
		Replicas:    replicas,
		Storage:     jetstream.FileStorage,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("open shard map bucket: %w", err)
	}
	return kv, nil
}

// readMap returns the current record and its revision, or (nil, 0, nil)
// when there is none.
func readMap(ctx context.Context, kv jetstream.KeyValue) (*pb.ShardMap, uint64, error) {
	e, err := kv.Get(ctx, shardMapKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("read shard map: %w", err)
	}
	m, err := parseMap(e.Value(), e.Revision())
	if err != nil {
		return nil, 0, err
	}
	return m, e.Revision(), nil
}

// parseMap decodes the shard map record stored at revision rev.
func parseMap(data []byte, rev uint64) (*pb.ShardMap, error) {
	m := &pb.ShardMap{}
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, fmt.Errorf("shard map record (revision %d) is corrupt: %w", rev, err)
	}
	if len(m.Shards) == 0 {
		return nil, fmt.Errorf("shard map record (revision %d) lists no shards", rev)
	}
	return m, nil
}

// ensureMap makes the durable shard map hold shards "0".."n-1" (n > 0), or
// returns the existing one (n == 0). Every write is a CAS, so routers that
// start together agree: the losers re-read and find the winner's record.
func ensureMap(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue, bucketOf func(string) string, n int) (*pb.ShardMap, error) {
	var want []string
	for i := range n {
		want = append(want, strconv.Itoa(i))
	}
	for attempt := 0; ; attempt++ {
		if attempt == 10 {
			return nil, errors.New("shard map keeps changing under this router; giving up after 10 attempts")
		}
		cur, rev, err := readMap(ctx, kv)
		if err != nil {
			return nil, err
		}
		switch {
		case cur == nil && n == 0:
			return nil, ErrNoShardMap
		case cur == nil:
			rec := &pb.ShardMap{Epoch: 1, Shards: want}
			data, _ := proto.Marshal(rec)
			if _, err := kv.Create(ctx, shardMapKey, data); err != nil {
				if errors.Is(err, jetstream.ErrKeyExists) {
					continue
				}
				return nil, fmt.Errorf("create shard map: %w", err)
			}
			return rec, nil
		case n == 0 || sameSet(cur.Shards, want):
			return cur, nil
		case cur.Move != nil:
			// The set was changed by latchkey.admin.shards.set: from then
			// on the record rules, and --shards only ever creates it.
			return cur, nil
		}
		if err := checkEmpty(ctx, js, cur.Shards, bucketOf, n); err != nil {
			return nil, err
		}
		rec := &pb.ShardMap{Epoch: cur.Epoch + 1, Shards: want}
		data, _ := proto.Marshal(rec)
		if _, err := kv.Update(ctx, shardMapKey, data, rev); err != nil {
			// A CAS conflict (10071, or 10164 with R>1) means someone else
			// changed the record: re-read. Anything else repeats until the
			// attempts run out or ctx ends.
			if ctx.Err() != nil {
				return nil, fmt.Errorf("update shard map: %w", err)
			}
			continue
		}
		return rec, nil
	}
}

// checkEmpty refuses a shard set change while any current shard holds data:
// keys would silently move to shards that do not have them. Storage's
// barrier message ($KV.<bucket>.=sync) is not data: every storage instance
// writes one, so counting it would refuse every change once storage ran.
func checkEmpty(ctx context.Context, js jetstream.JetStream, shards []string, bucketOf func(string) string, want int) error {
	for _, id := range shards {
		bucket := bucketOf(id)
		st, err := js.Stream(ctx, "KV_"+bucket)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("check shard %s for data: %w", id, err)
		}
		keys, err := keySubjects(ctx, st, bucket)
		if err != nil {
			return fmt.Errorf("check shard %s for data: %w", id, err)
		}
		if keys > 0 {
			return &migrationError{have: len(shards), want: want}
		}
	}
	return nil
}

// keySubjects counts the subjects of a shard's stream that hold a key (a
// value or a delete marker, whose fences travel with the key): all of them
// but the barrier's.
func keySubjects(ctx context.Context, st jetstream.Stream, bucket string) (uint64, error) {
	n := st.CachedInfo().State.NumSubjects
	if n == 0 {
		return 0, nil
	}
	_, err := st.GetLastMsgForSubject(ctx, "$KV."+bucket+"."+jskv.BarrierToken)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		return n, nil
	case err != nil:
		return 0, err
	}
	return n - 1, nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// watchMap keeps the router's routing current until ctx ends. The watch
// is only a wake-up: every notification, and every resyncEvery, re-reads
// the record, and a broken watch is opened again.
func (s *Server) watchMap(ctx context.Context) {
	tick := time.NewTicker(resyncEvery)
	defer tick.Stop()
	var w jetstream.KeyWatcher
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	for {
		if w == nil {
			var err error
			if w, err = s.kv.Watch(ctx, shardMapKey); err != nil {
				s.log.Warn("cannot watch the shard map; relying on periodic re-reads", "err", err)
				w = nil
			}
		}
		var updates <-chan jetstream.KeyValueEntry
		if w != nil {
			updates = w.Updates()
		}
		select {
		case <-ctx.Done():
			return
		case _, ok := <-updates:
			if !ok {
				w = nil // the watcher ended; reopen it on the next turn
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		case <-tick.C:
		}
		s.refresh(ctx)
	}
}

// refresh re-reads the shard map and swaps in a newer epoch.
func (s *Server) refresh(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, _, err := readMap(rctx, s.kv)
	switch {
	case err != nil:
		if ctx.Err() == nil {
			s.log.Warn("cannot re-read the shard map; keeping the current one", "err", err)
		}
	case m == nil:
		s.log.Warn("the shard map record is gone; keeping the current one", "epoch", s.route.Load().epoch)
	default:
		s.apply(m)
	}
}

// apply installs m if it is newer than the current routing: a higher
// epoch, or the same epoch with a different move.
func (s *Server) apply(m *pb.ShardMap) {
	for {
		cur := s.route.Load()
		if cur != nil && m.Epoch < cur.epoch {
			return
		}
		next := routingOf(m)
		if cur != nil && m.Epoch == cur.epoch && next.seen == cur.seen {
			return
		}
		if s.route.CompareAndSwap(cur, next) {
			s.log.Info("shard map in use", "epoch", m.Epoch, "shards", len(m.Shards), "moving", next.moving)
			return
		}
	}
}
