package tests

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	"github.com/latchkey/latchkey/kit/subjects"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// reshardEnv is one NATS server, storage for shards 0-5 (watches served)
// and a router whose map starts at shards 0-2.
type reshardEnv struct {
	t   *testing.T
	nc  *nats.Conn
	js  jetstream.JetStream
	set subjects.Set
}

func newReshardEnv(t *testing.T) *reshardEnv {
	quiet := slog.New(slog.DiscardHandler)
	s := natstest.Server(t)
	e := &reshardEnv{t: t, nc: natstest.Connect(t, s.ClientURL()), set: subjects.New("")}
	var err error
	if e.js, err = jetstream.New(e.nc); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Fence tokens must have been issued: give the lock bucket 50 sequences.
	locks, err := e.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: e.set.LockBucket()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := locks.Put(ctx, "l"+strconv.Itoa(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	st, err := storage.Start(ctx, natstest.Connect(t, s.ClientURL()), storage.Config{Shards: []string{"0", "1", "2", "3", "4", "5"},
		EventConn: natstest.Connect(t, s.ClientURL()), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Stop(context.Background()) })
	r, err := router.Start(ctx, natstest.Connect(t, s.ClientURL()), router.Config{Shards: 3, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Stop(context.Background()) })
	return e
}

func (e *reshardEnv) call(endpoint string, req, resp proto.Message) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return service.Call(ctx, e.nc, e.set.Public(endpoint), nil, req, resp)
}

func (e *reshardEnv) mustGet(key string) *pb.GetResponse {
	e.t.Helper()
	resp := &pb.GetResponse{}
	if err := e.call("kv.get", &pb.GetRequest{Key: key}, resp); err != nil {
		e.t.Fatalf("get %q: %v", key, err)
	}
	return resp
}

// move sets the shard set to shards, waits until the move is done and
// returns the map then.
func (e *reshardEnv) move(shards ...string) *pb.ShardsGetResponse {
	e.t.Helper()
	cur := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, cur); err != nil {
		e.t.Fatal(err)
	}
	set := &pb.ShardsSetResponse{}
	if err := e.call(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: shards, ExpectedEpoch: cur.Epoch}, set); err != nil {
		e.t.Fatalf("set %v: %v", shards, err)
	}
	// A second move while one runs, or a stale epoch, is a 409.
	err := e.call(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: []string{"0"}, ExpectedEpoch: cur.Epoch}, &pb.ShardsSetResponse{})
	if !errors.Is(err, apierr.ReasonMoveRunning) && !errors.Is(err, apierr.ReasonEpochMismatch) {
		e.t.Fatalf("a second set during a move: %v, want 409 move_running or epoch_mismatch", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := &pb.ShardsGetResponse{}
		if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
			e.t.Fatal(err)
		}
		// Done once flipped and, when it removed shards, once their
		// streams are retired (a new move waits for that).
		if got.Epoch == set.Epoch && got.Move.GetState() == pb.MoveState_MOVE_STATE_DONE && (got.Move.Retired || !slices.ContainsFunc(got.Move.FromShards, func(id string) bool { return !slices.Contains(got.Move.ToShards, id) })) {
			if mo := got.Move; mo.FreezeP99Us > mo.FreezeMaxUs {
				e.t.Fatalf("move to %v: freeze p99 %d us above the longest, %d us", shards, mo.FreezeP99Us, mo.FreezeMaxUs)
			}
			e.t.Logf("move to %v: %d keys, freeze p99 %d us, longest %d us", shards, got.Move.KeysMoved, got.Move.FreezeP99Us, got.Move.FreezeMaxUs)
			return got
		}
		if s := got.Move.GetState(); s == pb.MoveState_MOVE_STATE_FAILED || s == pb.MoveState_MOVE_STATE_ABORTED {
			e.t.Fatalf("move ended %v: %s", s, got.Move.Reason)
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("move to %v not done in time: %v", shards, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// abortMidMove starts a move to shards, aborts it once it has handed keys
// over, and waits until they are all back.
func (e *reshardEnv) abortMidMove(shards ...string) {
	e.t.Helper()
	cur := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, cur); err != nil {
		e.t.Fatal(err)
	}
	// Aim by the stream itself: abort once the new shard holds copies.
	target := shards[len(shards)-1]
	before := e.streamMsgs(target)
	if err := e.call(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: shards, ExpectedEpoch: cur.Epoch}, &pb.ShardsSetResponse{}); err != nil {
		e.t.Fatal(err)
	}
	for e.streamMsgs(target) < before+20 {
		time.Sleep(time.Millisecond)
	}
	copies := e.streamMsgs(target) - before
	if err := e.call(router.AdminShardsAbort, &pb.ShardsAbortRequest{ExpectedEpoch: cur.Epoch}, &pb.ShardsAbortResponse{}); err != nil {
		e.t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		got := &pb.ShardsGetResponse{}
		if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
			e.t.Fatal(err)
		}
		if got.Move.GetState() != pb.MoveState_MOVE_STATE_ABORTED || got.Epoch != cur.Epoch {
			e.t.Fatalf("after abort: %v (the move outran its abort: give it more keys)", got)
		}
		if got.Move.Returned {
			e.t.Logf("aborted with at least %d copies on shard %s; all back", copies, target)
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatal("the aborted move's keys did not come back in time")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkRetired checks that each removed shard's stream holds nothing but
// its ownership record, and that the storage instance still serving it
// answers a key it once held "moved" (what a router with a stale map
// would meet), never "absent".
func (e *reshardEnv) checkRetired(shards ...string) {
	e.t.Helper()
	for _, id := range shards {
		// The storage instance still serving the shard may have probed it
		// since (a barrier record); anything else is left over.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := e.js.Stream(ctx, "KV_"+e.set.ShardBucket(id))
		if err != nil {
			cancel()
			e.t.Fatal(err)
		}
		pfx := "$KV." + e.set.ShardBucket(id) + "."
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(pfx+">"))
		cancel()
		if err != nil {
			e.t.Fatal(err)
		}
		if info.State.Subjects[pfx+shardfmt.OwnerToken] != 1 {
			e.t.Fatalf("retired shard %s's stream lacks its ownership record: %v", id, info.State.Subjects)
		}
		for subj := range info.State.Subjects {
			if subj != pfx+shardfmt.OwnerToken && subj != pfx+jskv.BarrierToken {
				e.t.Fatalf("retired shard %s's stream still holds %s (subjects %v), want only its ownership record", id, subj, info.State.Subjects)
			}
		}
	}
	was := consistenthash.New([]string{"0", "1", "2", "3", "4", "5"})
	for i := 0; ; i++ {
		key := fmt.Sprintf("k%d", i)
		if !slices.Contains(shards, was.Get(key)) {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := service.Call(ctx, e.nc, e.set.Shard(was.Get(key), "get"), nil, &pb.GetRequest{Key: key}, &pb.GetResponse{})
		cancel()
		if !errors.Is(err, apierr.ReasonMoved) {
			e.t.Fatalf("get %s straight from retired shard %s: %v, want 409 moved", key, was.Get(key), err)
		}
		return
	}
}

func (e *reshardEnv) streamMsgs(shard string) uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, "KV_"+e.set.ShardBucket(shard))
	if err != nil {
		e.t.Fatal(err)
	}
	return st.CachedInfo().State.Msgs
}

// TestReshardKeepsEveryKey moves a loaded store 3 -> 4 -> 6 -> 3 shards, then
// starts 3 -> 4 again and aborts it mid-move, and moves to 4 after all, while
// CAS writers increment counters, then checks: every acknowledged
// increment is there exactly once (a counter equals its successful CASes),
// revisions of a key never went down, values, fences of written and of
// deleted keys, and the remaining TTL travelled with their keys. About 10 s.
func TestReshardKeepsEveryKey(t *testing.T) {
	e := newReshardEnv(t)
	const keys, counters = 400, 16
	for i := range keys {
		if err := e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("k%d", i), Value: []byte(fmt.Sprint("v", i))}, &pb.PutResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 20 {
		f := &pb.Fence{Lock: "L", Token: 40}
		if err := e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("f%d", i), Value: []byte("fenced"), Fence: f}, &pb.PutResponse{}); err != nil {
			t.Fatal(err)
		}
		if err := e.call("kv.delete", &pb.DeleteRequest{Key: fmt.Sprintf("d%d", i), Fence: f}, &pb.DeleteResponse{}); err != nil {
			t.Fatal(err)
		}
		if err := e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("t%d", i), Value: []byte("ttl"), TtlMs: 120_000}, &pb.PutResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	written := time.Now()

	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		acked   = map[string]int{}
		lastRev = map[string]uint64{}
		hist    = map[string][]string{}
		fail    error
	)
	for w := range 4 {
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				key := fmt.Sprintf("c%d", (n*7+w)%counters)
				mu.Lock()
				before := lastRev[key] // acknowledged before this get began
				mu.Unlock()
				g := &pb.GetResponse{}
				if err := e.call("kv.get", &pb.GetRequest{Key: key}, g); err != nil {
					continue // a 503 during a hand-over: retry
				}
				mu.Lock()
				hist[key] = append(hist[key], fmt.Sprintf("%s w%d get rev %d val %s", time.Now().Format("05.000000"), w, g.Revision, g.Value))
				if g.Revision < before {
					fail = fmt.Errorf("%s: read revision %d after %d was acknowledged", key, g.Revision, before)
				}
				lastRev[key] = max(lastRev[key], g.Revision)
				mu.Unlock()
				v, _ := strconv.Atoi(string(g.Value))
				exp := g.Revision
				p := &pb.PutResponse{}
				err := e.call("kv.put", &pb.PutRequest{Key: key, Value: []byte(strconv.Itoa(v + 1)), ExpectedRevision: &exp}, p)
				mu.Lock()
				hist[key] = append(hist[key], fmt.Sprintf("%s w%d put exp %d -> rev %d err %v", time.Now().Format("05.000000"), w, exp, p.Revision, err))
				mu.Unlock()
				if err == nil {
					mu.Lock()
					acked[key]++
					if p.Revision <= exp {
						fail = fmt.Errorf("%s: a write on revision %d got revision %d", key, exp, p.Revision)
					}
					lastRev[key] = max(lastRev[key], p.Revision)
					mu.Unlock()
				} else if !errors.Is(err, apierr.ReasonRevisionMismatch) && !errors.Is(err, apierr.ErrUnavailable) {
					mu.Lock()
					fail = fmt.Errorf("%s: put: %v", key, err)
					mu.Unlock()
				}
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	// Every key a move hands over is unavailable for a while (a resumed
	// move's keys, whose markers were in place, are not counted): the
	// record says how long.
	if mo := e.move("0", "1", "2", "3").Move; mo.KeysMoved == 0 || mo.FreezeMaxUs == 0 {
		t.Fatalf("3 -> 4 moved %d keys and measured no freeze (longest %d us)", mo.KeysMoved, mo.FreezeMaxUs)
	}
	time.Sleep(200 * time.Millisecond)
	e.move("0", "1", "2", "3", "4", "5")
	time.Sleep(200 * time.Millisecond)
	e.move("0", "1", "2")
	e.checkRetired("3", "4", "5")
	// Enough keys that the next move outlasts the abort's round trip.
	var lw sync.WaitGroup
	for w := range 8 {
		lw.Go(func() {
			for i := w; i < 3000; i += 8 {
				_ = e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("m%d", i), Value: []byte("m")}, &pb.PutResponse{})
			}
		})
	}
	lw.Wait()
	e.abortMidMove("0", "1", "2", "3")
	time.Sleep(200 * time.Millisecond)
	e.move("0", "1", "2", "3") // a move after an abort starts from the old set, whole
	time.Sleep(200 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if fail != nil {
		var k string
		fmt.Sscanf(fail.Error(), "%s", &k)
		for _, h := range hist[k[:len(k)-1]] {
			t.Log(h)
		}
		t.Fatal(fail)
	}

	// Ambiguous 503s (a put that timed out may have landed) are counted as
	// not acknowledged, so a counter may exceed its acks only by those;
	// the writers here never time out on a healthy server.
	for key, n := range acked {
		g := e.mustGet(key)
		if v, _ := strconv.Atoi(string(g.Value)); v != n {
			t.Errorf("%s: value %d after %d acknowledged increments", key, v, n)
		}
	}
	for i := range keys {
		key := fmt.Sprintf("k%d", i)
		if g := e.mustGet(key); !g.Found || string(g.Value) != fmt.Sprint("v", i) {
			t.Fatalf("%s after the moves: %v", key, g)
		}
	}
	old := &pb.Fence{Lock: "L", Token: 39}
	for i := range 20 {
		for _, key := range []string{fmt.Sprintf("f%d", i), fmt.Sprintf("d%d", i)} {
			err := e.call("kv.put", &pb.PutRequest{Key: key, Value: []byte("late"), Fence: old}, &pb.PutResponse{})
			if !errors.Is(err, apierr.ReasonStaleFence) {
				t.Fatalf("an older fence on %s after the moves: %v, want 409 stale_fence", key, err)
			}
		}
		key := fmt.Sprintf("t%d", i)
		if g := e.mustGet(key); !g.Found {
			t.Fatalf("TTL key %s lost", key)
		}
		// The TTL was not reset: the key's message expires no later than
		// 120 s after the original write (plus the rounding up to seconds).
		shard := ownerOf(e, key)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, found, err := jskv.LeaderGet(ctx, e.nc, "KV_"+e.set.ShardBucket(shard), "$KV."+e.set.ShardBucket(shard)+"."+jskv.EncodeKey(key))
		cancel()
		if err != nil || !found {
			t.Fatalf("TTL key %s on shard %s: %v %v", key, shard, found, err)
		}
		if at, ok := jskv.Expiry(m.Time, m.Header); !ok || at.After(written.Add(122*time.Second)) {
			t.Fatalf("TTL key %s expires at %v (ok %v): reset by the move (written %v)", key, at, ok, written)
		}
	}
}

func ownerOf(e *reshardEnv, key string) string {
	cur := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, cur); err != nil {
		e.t.Fatal(err)
	}
	return routerHash(cur.Shards, key)
}

func routerHash(shards []string, key string) string { return consistenthash.New(shards).Get(key) }

// TestReshardResumesAfterMarkerBeforeCopy plants the state a mover leaves
// when it dies between the two writes of a hand-over: the move is in the
// map, the key's moved marker (holding its value, fences and revision) is
// on the old shard, and the new shard has nothing. A router started then
// resumes the move; the key must arrive with its value, revision and
// fences, and its TTL as the marker says. About 2 s.
func TestReshardResumesAfterMarkerBeforeCopy(t *testing.T) {
	e := newReshardEnv(t)
	a, b := []string{"0", "1", "2"}, []string{"0", "1", "2", "3"}
	ha, hb := consistenthash.New(a), consistenthash.New(b)
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("x%d", i); hb.Get(k) == "3" {
			key = k
		}
	}
	src := ha.Get(key)
	f := &pb.Fence{Lock: "L", Token: 30}
	var pr pb.PutResponse
	if err := e.call("kv.put", &pb.PutRequest{Key: key, Value: []byte("precious"), Fence: f}, &pr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	subj := "$KV." + e.set.ShardBucket(src) + "." + jskv.EncodeKey(key)
	last, _, err := jskv.LeaderGet(ctx, e.nc, "KV_"+e.set.ShardBucket(src), subj)
	if err != nil {
		t.Fatal(err)
	}
	// The marker a mover writes first, planted before the move starts (the
	// env's router runs a mover, which would otherwise race the plant):
	// the pass then finds the state a dead mover left.
	h := nats.Header{}
	h.Set(jskv.HeaderKVOperation, "DEL")
	h.Set(shardfmt.HeaderMovedTo, "3")
	h.Set(shardfmt.HeaderMovedLive, "1")
	h.Set(shardfmt.HeaderRevision, strconv.FormatUint(pr.Revision, 10))
	h.Set(shardfmt.HeaderFences, last.Header.Get(shardfmt.HeaderFences))
	if _, err := jskv.PublishIfLast(ctx, e.js, subj, []byte("precious"), h, last.Seq); err != nil {
		t.Fatal(err)
	}
	e.move(b...)
	g := e.mustGet(key)
	if !g.Found || string(g.Value) != "precious" || g.Revision != pr.Revision {
		t.Fatalf("the key whose copy was interrupted: %v, want value precious at revision %d", g, pr.Revision)
	}
	old := &pb.Fence{Lock: "L", Token: 29}
	if err := e.call("kv.put", &pb.PutRequest{Key: key, Value: []byte("late"), Fence: old}, &pb.PutResponse{}); !errors.Is(err, apierr.ReasonStaleFence) {
		t.Fatalf("an older fence after the resumed copy: %v, want 409 stale_fence", err)
	}
	if owner := ownerOf(e, key); owner != "3" {
		t.Fatalf("the key is owned by %s after the move, want 3", owner)
	}
}

// TestReshardAbortWhileShardUnserved aborts a move whose new shard no
// storage instance serves (the move waits, reason shard_unserved): the
// abort must complete (returned) and the set must accept the next move.
func TestReshardAbortWhileShardUnserved(t *testing.T) {
	e := newReshardEnv(t)
	cur := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, cur); err != nil {
		t.Fatal(err)
	}
	if err := e.call(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: []string{"0", "1", "2", "7"}, ExpectedEpoch: cur.Epoch}, &pb.ShardsSetResponse{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := &pb.ShardsGetResponse{}
		if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
			t.Fatal(err)
		}
		if got.Move.GetReason() == string(apierr.ReasonShardUnserved) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no shard_unserved while shard 7 has no storage: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := e.call(router.AdminShardsAbort, &pb.ShardsAbortRequest{ExpectedEpoch: cur.Epoch}, &pb.ShardsAbortResponse{}); err != nil {
		t.Fatal(err)
	}
	for {
		got := &pb.ShardsGetResponse{}
		if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
			t.Fatal(err)
		}
		if got.Move.GetReturned() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the abort did not complete: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.move("0", "1", "2", "3")
}
