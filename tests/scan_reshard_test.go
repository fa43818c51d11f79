package tests

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/apierr"
	"github.com/latchkey/latchkey/kit/consistenthash"
	"github.com/latchkey/latchkey/kit/jskv"
	"github.com/latchkey/latchkey/kit/service"
	"github.com/latchkey/latchkey/kit/shardfmt"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// scanOp is one write of the writers of TestScansServedThroughReshard.
type scanOp struct {
	key, value string // value "" for a delete
	start, end time.Time
	rev        uint64
	ok         bool // acknowledged (else it may or may not have landed)
}

// scanRun is one complete scan (every page) and when it ran.
type scanRun struct {
	start, end time.Time
	items      map[string]*pb.Item
}

// scanAll pages through every key, limit keys a page, checking that keys
// come in strictly increasing order (so none twice). A 503 ends it with
// the error; anything else fails the test. served, if not nil, is called
// for every page served.
func scanAll(e *reshardEnv, prefix string, limit uint32, timeout time.Duration, served func()) (map[string]*pb.Item, error) {
	items := map[string]*pb.Item{}
	after, prev := "", ""
	for {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		page := &pb.ScanResponse{}
		err := service.Call(ctx, e.nc, e.set.Public("kv.scan"), nil, &pb.ScanRequest{Prefix: prefix, Limit: limit, After: after}, page)
		cancel()
		if err != nil {
			if errors.Is(err, apierr.ErrUnavailable) {
				return nil, err
			}
			return nil, fmt.Errorf("scan after %q: %w", after, err)
		}
		if served != nil {
			served()
		}
		if len(page.Items) > int(limit) {
			return nil, fmt.Errorf("a page of %d items for limit %d", len(page.Items), limit)
		}
		for _, it := range page.Items {
			if it.Key <= prev {
				return nil, fmt.Errorf("key %q listed after %q: out of order or twice", it.Key, prev)
			}
			prev = it.Key
			items[it.Key] = it
		}
		if !page.More {
			return items, nil
		}
		if len(page.Items) == 0 {
			return nil, fmt.Errorf("an empty page that says more, after %q", after)
		}
		after = page.Items[len(page.Items)-1].Key
	}
}

// TestScansServedThroughReshard runs full scans (pages of 150) without
// pause while the set goes 3 -> 4 -> 3, and while a move back to 4 is
// aborted and its keys are given back, under writers that put and delete
// keys, then judges every scan against the writers' log. A scan lists
// each key once, in order; every preloaded key; for a key whose newest
// write acknowledged before the scan began is a put, a revision at least
// as new (or nothing, if a delete of it ran during the scan); for one
// whose newest such write is a delete, nothing older; and only values
// some put wrote, at the revision acknowledged for it. Scans must be
// served while the moves run, not refused for their length. About 4 s.
func TestScansServedThroughReshard(t *testing.T) {
	e := newReshardEnv(t)
	const preload, hot = 1500, 100
	var pw sync.WaitGroup
	for w := range 8 {
		pw.Go(func() {
			for i := w; i < preload; i += 8 {
				if err := e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("p%04d", i), Value: []byte("p")}, &pb.PutResponse{}); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	pw.Wait()

	var (
		stop    atomic.Bool
		wg      sync.WaitGroup
		mu      sync.Mutex
		ops     []scanOp
		runs    []scanRun
		pages   []time.Time // when each scan page was served
		refused atomic.Int64
		fail    atomic.Value
	)
	for w := range 4 {
		wg.Go(func() {
			for n := 0; !stop.Load(); n++ {
				op := scanOp{key: fmt.Sprintf("w%03d", (n*13+w*7)%hot), start: time.Now()}
				var err error
				if n%4 == 3 {
					d := &pb.DeleteResponse{}
					err = e.call("kv.delete", &pb.DeleteRequest{Key: op.key}, d)
					op.rev = d.Revision
				} else {
					op.value = fmt.Sprintf("%s/%d/%d", op.key, w, n)
					p := &pb.PutResponse{}
					err = e.call("kv.put", &pb.PutRequest{Key: op.key, Value: []byte(op.value)}, p)
					op.rev = p.Revision
				}
				op.end, op.ok = time.Now(), err == nil
				mu.Lock()
				ops = append(ops, op)
				mu.Unlock()
			}
		})
	}
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
				start := time.Now()
				items, err := scanAll(e, "", 150, 5*time.Second, func() {
					mu.Lock()
					pages = append(pages, time.Now())
					mu.Unlock()
				})
				if errors.Is(err, apierr.ErrUnavailable) {
					refused.Add(1)
					continue
				}
				if err != nil {
					fail.Store(err)
					return
				}
				mu.Lock()
				runs = append(runs, scanRun{start: start, end: time.Now(), items: items})
				mu.Unlock()
			}
		})
	}

	// When each move ran, as its record said.
	type window struct{ from, to time.Time }
	var windows []window
	moving := func(run func(...string), shards ...string) {
		done := make(chan struct{})
		var w window
		var pollers sync.WaitGroup
		pollers.Go(func() {
			for {
				got := &pb.ShardsGetResponse{}
				if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err == nil {
					s := got.Move.GetState()
					if s == pb.MoveState_MOVE_STATE_COPYING || s == pb.MoveState_MOVE_STATE_HANDOVER || (s == pb.MoveState_MOVE_STATE_ABORTED && !got.Move.Returned) {
						now := time.Now()
						if w.from.IsZero() {
							w.from = now
						}
						w.to = now
					}
				}
				select {
				case <-done:
					return
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
		run(shards...)
		close(done)
		pollers.Wait()
		windows = append(windows, w)
	}
	time.Sleep(300 * time.Millisecond)
	move := func(shards ...string) { e.move(shards...) }
	moving(move, "0", "1", "2", "3")
	time.Sleep(300 * time.Millisecond)
	moving(move, "0", "1", "2")
	time.Sleep(300 * time.Millisecond)
	// An aborted move gives its keys back: scans follow them too.
	moving(e.abortMidMove, "0", "1", "2", "3")
	time.Sleep(300 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if err, _ := fail.Load().(error); err != nil {
		t.Fatal(err)
	}

	byKey := map[string][]scanOp{}
	for _, op := range ops {
		byKey[op.key] = append(byKey[op.key], op)
	}
	for _, r := range runs {
		at := r.start.Format("05.000")
		for i := range preload {
			if key := fmt.Sprintf("p%04d", i); r.items[key] == nil || string(r.items[key].Value) != "p" {
				t.Fatalf("scan started %v: preloaded key %s listed as %v", at, key, r.items[key])
			}
		}
		for key, kops := range byKey {
			// The newest write acknowledged before the scan began, and
			// whether a delete may have landed while it ran.
			var before *scanOp
			deleting := false
			for i := range kops {
				op := &kops[i]
				if op.ok && op.end.Before(r.start) && (before == nil || op.rev > before.rev) {
					before = op
				}
				if op.value == "" && op.start.Before(r.end) && !(op.ok && op.end.Before(r.start)) {
					deleting = true
				}
			}
			it := r.items[key]
			if it != nil {
				found := false
				for _, op := range kops {
					if op.value == string(it.Value) {
						found = true
						if op.ok && op.rev != it.Revision {
							t.Fatalf("scan started %v lists %s = %q at revision %d; that put was acknowledged at revision %d", at, key, it.Value, it.Revision, op.rev)
						}
					}
				}
				if !found {
					t.Fatalf("scan started %v lists %s = %q, which no put wrote", at, key, it.Value)
				}
			}
			switch {
			case before == nil:
			case before.value != "" && it == nil && !deleting:
				t.Fatalf("scan started %v: %s was acknowledged at revision %d before, and is not listed", at, key, before.rev)
			case it != nil && it.Revision < before.rev, it != nil && before.value == "" && it.Revision == before.rev:
				t.Fatalf("scan started %v: %s lists revision %d, older than the %v acknowledged at revision %d before it began", at, key, it.Revision, map[bool]string{true: "put", false: "delete"}[before.value != ""], before.rev)
			}
		}
	}
	for i, w := range windows {
		during, served := 0, 0
		for _, r := range runs {
			if !r.start.Before(w.from) && !r.end.After(w.to) {
				during++
			}
		}
		for _, at := range pages {
			if !at.Before(w.from) && !at.After(w.to) {
				served++
			}
		}
		t.Logf("move %d ran %v: %d scan pages served within it, %d complete scans; %d scans refused (503) in all, %d complete", i+1, w.to.Sub(w.from).Round(time.Millisecond), served, during, refused.Load(), len(runs))
		if served < 3 {
			t.Fatalf("move %d (%v long): only %d scan pages were served within it; scans must be served during a move", i+1, w.to.Sub(w.from), served)
		}
	}
}

// TestScanThroughInterruptedHandOver leaves a key between its moved marker
// and its copy, as a mover that died there does, while the move is in
// the map and no mover runs (the test holds the mover lease): a scan over
// that key is a 503 (or lists it rightly), never an answer without it;
// scans of other keys are served. Then the copy lands, the key is written
// and deleted on its new shard, and each scan, in pages of any size, lists
// its current state exactly once. Finally the mover resumes and the move
// completes. About 5 s.
func TestScanThroughInterruptedHandOver(t *testing.T) {
	e := newReshardEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta, err := e.js.KeyValue(ctx, e.set.MetaBucket())
	if err != nil {
		t.Fatal(err)
	}
	// A lease of a mover that is gone: nobody drives the move until it
	// ends (or is removed).
	if _, err := meta.Put(ctx, "mover", []byte("dead-mover "+strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10))); err != nil {
		t.Fatal(err)
	}
	a, b := []string{"0", "1", "2"}, []string{"0", "1", "2", "3"}
	ha, hb := consistenthash.New(a), consistenthash.New(b)
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("s%02d", i); hb.Get(k) == "3" && i >= 10 {
			key = k
		}
	}
	want := map[string]string{}
	for i := range 40 {
		k := fmt.Sprintf("s%02d", i)
		want[k] = "v-" + k
		if k == key {
			want[k] = "precious"
		}
		if err := e.call("kv.put", &pb.PutRequest{Key: k, Value: []byte(want[k])}, &pb.PutResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 10 {
		if err := e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("z%d", i), Value: []byte("z")}, &pb.PutResponse{}); err != nil {
			t.Fatal(err)
		}
	}
	cur := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, cur); err != nil {
		t.Fatal(err)
	}
	if err := e.call(router.AdminShardsSet, &pb.ShardsSetRequest{Shards: b, ExpectedEpoch: cur.Epoch}, &pb.ShardsSetResponse{}); err != nil {
		t.Fatal(err)
	}
	expect := func(what string, limit uint32) {
		t.Helper()
		items, err := scanAll(e, "s", limit, 5*time.Second, nil)
		if err != nil {
			t.Fatalf("%s: scan in pages of %d: %v", what, limit, err)
		}
		if len(items) != len(want) {
			t.Fatalf("%s: scan in pages of %d lists %d keys, want %d", what, limit, len(items), len(want))
		}
		for k, v := range want {
			if it := items[k]; it == nil || string(it.Value) != v {
				t.Fatalf("%s: scan in pages of %d lists %s as %v, want %q", what, limit, k, it, v)
			}
		}
	}
	expect("the move in the map, nothing handed over", 1000)

	// What the mover writes before it hands anything over: the new
	// shard's ownership record (prepareTarget). Then the marker, as the
	// mover writes it first.
	rec, _ := proto.Marshal(&pb.ShardMap{Epoch: cur.Epoch + 1, Shards: b})
	if _, err := e.js.Publish(ctx, "$KV."+e.set.ShardBucket("3")+"."+shardfmt.OwnerToken, rec); err != nil {
		t.Fatal(err)
	}
	src := ha.Get(key)
	subj := "$KV." + e.set.ShardBucket(src) + "." + jskv.EncodeKey(key)
	last, _, err := jskv.LeaderGet(ctx, e.nc, "KV_"+e.set.ShardBucket(src), subj)
	if err != nil {
		t.Fatal(err)
	}
	rev := shardfmt.MessageRevision(last.Seq, last.Header, 0)
	h := nats.Header{}
	h.Set(jskv.HeaderKVOperation, "DEL")
	h.Set(shardfmt.HeaderMovedTo, "3")
	h.Set(shardfmt.HeaderMovedLive, "1")
	h.Set(shardfmt.HeaderRevision, strconv.FormatUint(rev, 10))
	if _, err := jskv.PublishIfLast(ctx, e.js, subj, []byte("precious"), h, last.Seq); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []uint32{1000, 7} {
		items, err := scanAll(e, "s", limit, time.Second, nil)
		switch {
		case errors.Is(err, apierr.ErrUnavailable):
			t.Logf("pages of %d while %s is between marker and copy: %v", limit, key, err)
		case err != nil:
			t.Fatal(err)
		case items[key] == nil || string(items[key].Value) != "precious":
			t.Fatalf("a scan while %s is between marker and copy answered without it (pages of %d): %v", key, limit, items[key])
		default:
			t.Fatalf("a scan listed %s before its copy landed: it can only have read it from the marker", key)
		}
	}
	if items, err := scanAll(e, "z", 1000, 5*time.Second, nil); err != nil || len(items) != 10 {
		t.Fatalf("a scan of other keys while %s is between marker and copy: %d keys, %v; want all 10", key, len(items), err)
	}

	// The copy, as the mover writes it second.
	dst := "$KV." + e.set.ShardBucket("3") + "." + jskv.EncodeKey(key)
	ch := nats.Header{}
	ch.Set(shardfmt.HeaderRevision, strconv.FormatUint(rev, 10))
	if _, err := jskv.PublishIfLast(ctx, e.js, dst, []byte("precious"), ch, 0); err != nil {
		t.Fatal(err)
	}
	for _, limit := range []uint32{1000, 7, 1} {
		expect("the copy landed", limit)
	}
	items, err := scanAll(e, "s", 1000, 5*time.Second, nil)
	if err != nil || items[key].Revision != rev {
		t.Fatalf("the copied key: %v (%v), want revision %d", items[key], err, rev)
	}
	if err := e.call("kv.put", &pb.PutRequest{Key: key, Value: []byte("after")}, &pb.PutResponse{}); err != nil {
		t.Fatal(err)
	}
	want[key] = "after"
	for _, limit := range []uint32{1000, 7} {
		expect("written on its new shard", limit)
	}
	if err := e.call("kv.delete", &pb.DeleteRequest{Key: key}, &pb.DeleteResponse{}); err != nil {
		t.Fatal(err)
	}
	delete(want, key)
	for _, limit := range []uint32{1000, 7, 1} {
		expect("deleted on its new shard", limit)
	}

	// The mover resumes (its lease is free) and finishes the move.
	if err := meta.Delete(ctx, "mover"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := &pb.ShardsGetResponse{}
		if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
			t.Fatal(err)
		}
		if got.Epoch == cur.Epoch+1 && got.Move.GetState() == pb.MoveState_MOVE_STATE_DONE {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the resumed move did not finish: %v", got)
		}
		time.Sleep(20 * time.Millisecond)
	}
	expect("after the move", 7)
}
