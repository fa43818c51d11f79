package tests

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
)

// TestWatchFollowsKeysThroughReshard watches a prefix while the shard set
// goes 3 -> 4 -> 3 under concurrent writers (puts and deletes), some of
// whose writes land on a key's new shard while the move is still COPYING.
// Every event must be an acknowledged write (a copy or a moved marker
// would be a second event of a revision, a mover's tombstone a delete
// nobody made), no (key, revision) twice, revisions strictly increasing
// per key, and the watcher must end with every key's final state and
// without the removed shard's feed. A raw watcher started before the
// first move is told by its keepalive (404 watch_resharded) and resumes
// onto the new shard from its stream's start. About 10 s.
func TestWatchFollowsKeysThroughReshard(t *testing.T) {
	e := newReshardEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := client.New(e.nc)

	// Enough other keys that each move copies for a while.
	var lwg sync.WaitGroup
	for w := range 16 {
		lwg.Go(func() {
			for i := w; i < 3000; i += 16 {
				if _, err := c.Put(ctx, fmt.Sprintf("pre%d", i), []byte("x")); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	lwg.Wait()

	w, err := c.Watch(ctx, "w:", client.WatchKeepaliveInterval(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	raw := rawWatch(t, e, nil)

	// The move's state, polled, so that writers can tell COPYING.
	var moveState atomic.Int32
	var target atomic.Pointer[[]string]
	stopPoll := make(chan struct{})
	var pwg sync.WaitGroup
	pwg.Go(func() {
		for {
			select {
			case <-stopPoll:
				return
			case <-time.After(5 * time.Millisecond):
			}
			got := &pb.ShardsGetResponse{}
			if e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got) == nil && got.Move != nil {
				to := got.Move.ToShards
				target.Store(&to)
				moveState.Store(int32(got.Move.State))
			}
		}
	})

	type write struct {
		del   bool
		value string
	}
	var (
		mu     sync.Mutex
		acked  = map[string]map[uint64]write{} // key -> revision -> write
		final  = map[string]write{}            // the acknowledged write of the highest revision
		finRev = map[string]uint64{}
		onNew  atomic.Int64 // writes seen on the key's new shard while COPYING
		seq    atomic.Int64
		stopW  = make(chan struct{})
		wwg    sync.WaitGroup
		gate   sync.RWMutex // writers hold it shared; a checkpoint pauses them
	)
	keys := make([]string, 60)
	for i := range keys {
		keys[i] = fmt.Sprintf("w:%d", i)
	}
	for wr := range 4 {
		wwg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stopW:
					return
				default:
				}
				gate.RLock()
				key := keys[(wr*15+n)%len(keys)]
				if n%15 >= 12 {
					key = keys[wr*15+n%3] // a few hot keys per writer
				}
				var rev uint64
				var wrt write
				var err error
				copying := moveState.Load() == int32(pb.MoveState_MOVE_STATE_COPYING)
				if n%9 == 8 {
					var deleted bool
					deleted, rev, err = c.Delete(ctx, key)
					wrt.del = true
					if err == nil && !deleted {
						gate.RUnlock()
						continue
					}
				} else {
					wrt.value = fmt.Sprint(seq.Add(1))
					rev, err = c.Put(ctx, key, []byte(wrt.value))
				}
				if err != nil {
					gate.RUnlock()
					if ctx.Err() == nil && !errors.Is(err, client.ErrUnavailable) {
						t.Errorf("write %s: %v", key, err)
					}
					continue
				}
				mu.Lock()
				if acked[key] == nil {
					acked[key] = map[uint64]write{}
				}
				acked[key][rev] = wrt
				// Two writers may hit one key: their acks can be recorded
				// in either order, the revisions say which came last.
				if rev > finRev[key] {
					final[key], finRev[key] = wrt, rev
				}
				mu.Unlock()
				gate.RUnlock()
				if to := target.Load(); copying && to != nil && !wrt.del {
					// Did it land on the key's new shard during COPYING?
					nt := consistenthash.New(*to).Get(key)
					if landedOn(ctx, e, nt, key, wrt.value) && moveState.Load() == int32(pb.MoveState_MOVE_STATE_COPYING) {
						onNew.Add(1)
					}
				}
				time.Sleep(time.Millisecond)
			}
		})
	}

	// The watcher's view of every key, checked as events arrive.
	type seen struct {
		rev uint64
		w   write
	}
	last := map[string]seen{}
	var lastMu sync.Mutex
	bad := make(chan string, 16)
	var events atomic.Int64
	var ewg sync.WaitGroup
	ewg.Go(func() {
		dup := map[string]bool{}
		for ev := range w.Events() {
			events.Add(1)
			id := fmt.Sprintf("%s@%d", ev.Key, ev.Revision)
			mu.Lock()
			wrt, ok := acked[ev.Key][ev.Revision]
			mu.Unlock()
			lastMu.Lock()
			prev := last[ev.Key]
			var why string
			switch {
			case dup[id]:
				why = "delivered twice (a move's copy or marker as an event?)"
			case !ok:
				// The write may not have been recorded yet: its ack and the
				// event race. Wait for it briefly.
				for range 200 {
					time.Sleep(5 * time.Millisecond)
					mu.Lock()
					wrt, ok = acked[ev.Key][ev.Revision]
					mu.Unlock()
					if ok {
						break
					}
				}
				if !ok {
					why = fmt.Sprintf("%v event that no acknowledged write made (a mover's message?)", ev.Type)
				}
			}
			if why == "" && ev.Revision <= prev.rev {
				why = fmt.Sprintf("revision %d after %d", ev.Revision, prev.rev)
			}
			if why == "" && (wrt.del != (ev.Type == client.EventDelete) || (!wrt.del && string(ev.Value) != wrt.value)) {
				why = fmt.Sprintf("%v %q, the write was %+v", ev.Type, ev.Value, wrt)
			}
			dup[id] = true
			last[ev.Key] = seen{ev.Revision, wrt}
			lastMu.Unlock()
			if why != "" {
				select {
				case bad <- fmt.Sprintf("key %s (shard %s): %s", ev.Key, ev.Shard, why):
				default:
				}
			}
		}
	})

	// caughtUp waits until the watcher has every key's last acknowledged
	// state (writers paused or stopped).
	caughtUp := func(when string) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			mu.Lock()
			want := maps.Clone(final)
			mu.Unlock()
			lastMu.Lock()
			missing := ""
			for k, f := range want {
				if l := last[k]; l.w != f {
					missing = fmt.Sprintf("%s: watcher has %+v, final write %+v", k, l, f)
					break
				}
			}
			lastMu.Unlock()
			if missing == "" {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s, the watcher did not reach every key's last state: %s", when, missing)
			}
			select {
			case why := <-bad:
				t.Fatal(why)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}

	time.Sleep(300 * time.Millisecond)
	e.move("0", "1", "2", "3")
	// Keys on the new shard 3, written there: the watcher has them.
	gate.Lock()
	caughtUp("after 3 -> 4")
	gate.Unlock()
	// The raw watcher learns from its keepalive that it lacks shard 3.
	err = e.call("kv.watch.keepalive", &pb.WatchKeepaliveRequest{WatchId: raw.WatchId}, &pb.WatchKeepaliveResponse{})
	if !errors.Is(err, apierr.ReasonWatchResharded) {
		t.Fatalf("keepalive of a raw watch that lacks the new shard: %v, want 404 watch_resharded", err)
	}
	resumed := rawWatch(t, e, raw.Cursors)
	if c3, ok := resumed.Cursors["3"]; !ok || cursorSeqOf(c3) != 0 {
		t.Fatalf("resumed raw watch: cursors %v, want shard 3 from its stream's start", resumed.Cursors)
	}
	time.Sleep(300 * time.Millisecond)
	e.move("0", "1", "2")
	time.Sleep(300 * time.Millisecond)
	close(stopW)
	wwg.Wait()
	close(stopPoll)
	pwg.Wait()

	// Every key's final state arrives.
	caughtUp("after both moves")
	deadline := time.Now().Add(20 * time.Second)
	// And drops the removed shard once drained.
	for {
		if _, ok := w.Cursors()["3"]; !ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watcher still follows removed shard 3: %v", w.Cursors())
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case why := <-bad:
		t.Fatal(why)
	default:
	}
	got := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	nacked := 0
	for _, m := range acked {
		nacked += len(m)
	}
	mu.Unlock()
	t.Logf("%d acknowledged writes of %d keys, %d events, %d writes on a key's new shard during COPYING, last move copied %d keys, %d resumes",
		nacked, len(final), events.Load(), onNew.Load(), got.Move.GetKeysMoved(), w.Resumes())
	if onNew.Load() == 0 {
		t.Fatal("no write landed on a key's new shard during COPYING: the test did not test that")
	}
	if got.Move.GetKeysMoved() == 0 {
		t.Fatal("the moves copied nothing")
	}
}

// rawWatch starts a watch on "w:" the way a caller without the Go client
// does (from cursors when given) and returns the router's answer.
func rawWatch(t *testing.T, e *reshardEnv, cursors map[string]string) *pb.WatchResponse {
	t.Helper()
	inbox := nats.NewInbox()
	sub, err := e.nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	resp := &pb.WatchResponse{}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := service.Call(ctx, e.nc, e.set.Public("kv.watch"), nil, &pb.WatchRequest{Prefix: "w:", Deliver: inbox, Cursors: cursors}, resp); err != nil {
		t.Fatal(err)
	}
	return resp
}

// landedOn reports whether shard id's stream holds value as key's last
// message written by storage itself (not a copy: copies carry the
// revision they had on the key's old shard).
func landedOn(ctx context.Context, e *reshardEnv, id, key, value string) bool {
	st, err := e.js.Stream(ctx, "KV_"+e.set.ShardBucket(id))
	if err != nil {
		return false
	}
	m, err := st.GetLastMsgForSubject(ctx, "$KV."+e.set.ShardBucket(id)+"."+jskv.EncodeKey(key))
	if err != nil {
		return false
	}
	return string(m.Data) == value && m.Header.Get(shardfmt.HeaderRevision) == "" && shardfmt.MovedTo(m.Header) == ""
}

func cursorSeqOf(c string) uint64 {
	var n uint64
	fmt.Sscanf(c, "%d-", &n)
	return n
}
