package tests

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
)

// watchLog is what one watcher received, per key.
type watchLog struct {
	mu     sync.Mutex
	prefix string
	exact  bool
	events map[string][]client.Event
}

func (l *watchLog) matches(key string) bool {
	if l.exact {
		return key == l.prefix
	}
	return strings.HasPrefix(key, l.prefix)
}

// TestWatchThroughFailures runs watchers on overlapping prefixes (one of
// them a slow reader with a small buffer) against a 3-node cluster with two
// storage instances serving every shard, while writers put, delete and put
// with TTLs that the server expires. Mid-run one storage instance dies
// (its connections drop without a goodbye) and one NATS server is shut
// down and restarted. Afterwards, for every watcher and every key it
// matches: the events of the key arrived in strictly increasing revision
// order (so nothing twice), every acknowledged change is covered (an event
// of at least its revision), and the last event is the key's final state
// (its value's revision, or a delete/expiry when the key is gone).
func TestWatchThroughFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster test")
	}
	// A small ack window, so that the slow watcher is also cut off by the
	// server (slow_consumer), not only by its own dropped messages.
	oldWindow := storage.WatchMaxUnacked
	storage.WatchMaxUnacked = 200
	t.Cleanup(func() { storage.WatchMaxUnacked = oldWindow })
	t0 := time.Now()
	c := natstest.NewCluster(t)
	urls := c.URLs()
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	startStorage := func(name string) (*nats.Conn, *nats.Conn, *storage.Server) {
		nc := natstest.Connect(t, urls, nats.Name(name))
		ev := natstest.Connect(t, urls, nats.Name(name+"-events"))
		s, err := storage.Start(ctx, nc, storage.Config{Shards: suite.ShardIDs(3), Replicas: 3, EventConn: ev, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		return nc, ev, s
	}
	ncA, evA, _ := startStorage("storage-a")
	_, _, stB := startStorage("storage-b")
	t.Cleanup(func() { _ = stB.Stop(context.Background()) })
	rnc := natstest.Connect(t, urls, nats.Name("router"))
	rt, err := router.Start(ctx, rnc, router.Config{Shards: 3, Replicas: 3, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = rt.Stop(context.Background()) })
	t.Logf("cluster and services up in %s", time.Since(t0))

	slowBefore := cancelledMetric(t, "slow_consumer")
	prefixes := []string{"", "a", "b", "c", "d", "a0", "a1", "b2", "c0", "d1", "a0-1", "b"}
	const watchers = 24
	logs := make([]*watchLog, 0, watchers+1)
	var ws []*client.Watcher
	var readers sync.WaitGroup
	startWatcher := func(l *watchLog, opts []client.WatchOption, slow bool) {
		// The slow watcher's drops are the point; keep them off the log.
		wnc := natstest.Connect(t, urls, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
		var w *client.Watcher
		var err error
		// Interest in the router's subjects reaches other cluster nodes
		// a moment after it started.
		for try := 0; try < 100; try++ {
			if w, err = client.New(wnc).Watch(ctx, l.prefix, opts...); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
		logs = append(logs, l)
		readers.Go(func() {
			for ev := range w.Events() {
				l.mu.Lock()
				l.events[ev.Key] = append(l.events[ev.Key], ev)
				l.mu.Unlock()
				if slow {
					time.Sleep(5 * time.Millisecond)
				}
			}
		})
	}
	silence := client.WatchSilence(6 * time.Second)
	for i := range watchers {
		l := &watchLog{prefix: prefixes[i%len(prefixes)], events: map[string][]client.Event{}}
		opts := []client.WatchOption{silence}
		if i == watchers-1 {
			l.prefix, l.exact = "a0-1", true
			opts = append(opts, client.WatchKey())
		}
		startWatcher(l, opts, false)
	}
	slow := &watchLog{prefix: "", events: map[string][]client.Event{}}
	startWatcher(slow, []client.WatchOption{silence, client.WatchBuffer(256), client.WatchKeepaliveInterval(300 * time.Millisecond)}, true)
	t.Logf("%d watchers up at %s", len(ws), time.Since(t0))

	// Writers: acked[key] is the highest acknowledged revision.
	var (
		amu    sync.Mutex
		acked  = map[string]uint64{}
		ops    atomic.Int64
		errs   atomic.Int64
		stop   = make(chan struct{})
		writes sync.WaitGroup
	)
	keys := make([]string, 48)
	for i := range keys {
		keys[i] = fmt.Sprintf("%c%d-%d", 'a'+i%4, i%3, i%5)
	}
	for wi := range 6 {
		wnc := natstest.Connect(t, urls)
		cl := client.New(wnc, client.WithTimeout(3*time.Second))
		writes.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(wi), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				key := keys[rng.IntN(len(keys))]
				var rev uint64
				var err error
				switch p := rng.IntN(100); {
				case p < 60:
					rev, err = cl.Put(ctx, key, fmt.Appendf(nil, "%d", ops.Load()))
				case p < 75:
					rev, err = cl.Put(ctx, key, []byte("ttl"), client.WithTTL(time.Second))
				default:
					var deleted bool
					deleted, rev, err = cl.Delete(ctx, key)
					if err == nil && !deleted {
						rev = 0 // nothing written
					}
				}
				if err != nil {
					errs.Add(1)
					time.Sleep(20 * time.Millisecond)
					continue
				}
				ops.Add(1)
				if rev > 0 {
					amu.Lock()
					acked[key] = max(acked[key], rev)
					amu.Unlock()
				}
				time.Sleep(time.Duration(rng.IntN(4)) * time.Millisecond)
			}
		})
	}
	// Writes per second, to see what each fault costs.
	var rates []string
	go func() {
		last := ops.Load()
		for {
			select {
			case <-stop:
				return
			case <-time.After(time.Second):
			}
			n := ops.Load()
			amu.Lock()
			rates = append(rates, fmt.Sprint(n-last))
			amu.Unlock()
			last = n
		}
	}()
	time.Sleep(4 * time.Second)
	t.Logf("%d writes by %s; killing storage instance a", ops.Load(), time.Since(t0))
	ncA.Close() // a crash: no goodbye, its feeds go silent
	evA.Close()
	time.Sleep(4 * time.Second)
	node := 1
	t.Logf("%d writes by %s; shutting NATS server n%d down", ops.Load(), time.Since(t0), node)
	c.Kill(node)
	time.Sleep(2 * time.Second)
	if err := c.Restart(node); err != nil {
		t.Fatal(err)
	}
	t.Logf("n%d restarted at %s", node, time.Since(t0))
	time.Sleep(5 * time.Second)
	close(stop)
	writes.Wait()
	amu.Lock()
	t.Logf("writers stopped at %s: %d acknowledged writes, %d failed (503s during faults); writes per second: %s",
		time.Since(t0), ops.Load(), errs.Load(), strings.Join(rates, " "))
	amu.Unlock()

	// Final state of every key, read linearizably once TTLs have run out.
	time.Sleep(3 * time.Second)
	check := client.New(natstest.Connect(t, urls), client.WithTimeout(10*time.Second))
	final := map[string]uint64{} // key -> revision of its value; absent = gone
	for _, k := range keys {
		e, err := check.Get(ctx, k)
		if err == nil {
			final[k] = e.Revision
		} else if !strings.Contains(err.Error(), "not found") {
			t.Fatalf("get %s: %v", k, err)
		}
	}
	settled := func(l *watchLog) error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for _, k := range keys {
			if !l.matches(k) {
				if len(l.events[k]) > 0 {
					return fmt.Errorf("watch %q got events of %s", l.prefix, k)
				}
				continue
			}
			evs := l.events[k]
			amu.Lock()
			a := acked[k]
			amu.Unlock()
			if len(evs) == 0 {
				if a > 0 {
					return fmt.Errorf("watch %q: no event of %s (acknowledged up to %d)", l.prefix, k, a)
				}
				continue
			}
			last := evs[len(evs)-1]
			if rev, live := final[k]; live {
				if last.Type != client.EventPut || last.Revision != rev {
					return fmt.Errorf("watch %q: last event of %s is %v@%d, the key is at %d", l.prefix, k, last.Type, last.Revision, rev)
				}
			} else if last.Type == client.EventPut || last.Revision < a {
				return fmt.Errorf("watch %q: last event of %s is %v@%d, the key is gone (acknowledged up to %d)", l.prefix, k, last.Type, last.Revision, a)
			}
		}
		return nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for i, l := range logs {
		for {
			err := settled(l)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("watcher %d (of %d, the last is the slow one): %v; resumes %d, cancellations %d, err %v, cursors %v",
					i, len(logs), err, ws[i].Resumes(), ws[i].Cancellations(), ws[i].Err(), ws[i].Cursors())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	var resumes, cancels int64
	for i, l := range logs {
		l.mu.Lock()
		for k, evs := range l.events {
			if !slices.IsSortedFunc(evs, func(a, b client.Event) int { return int(a.Revision) - int(b.Revision) }) {
				t.Errorf("watch %q: events of %s out of order", l.prefix, k)
			}
			for j := 1; j < len(evs); j++ {
				if evs[j].Revision == evs[j-1].Revision {
					t.Errorf("watch %q: %s revision %d delivered twice", l.prefix, k, evs[j].Revision)
				}
			}
		}
		l.mu.Unlock()
		resumes += ws[i].Resumes()
		cancels += ws[i].Cancellations()
	}
	sw := ws[len(ws)-1]
	t.Logf("all %d watchers settled at %s; %d resumes, %d server cancellations; slow watcher: %d resumes, %d cancellations",
		len(ws), time.Since(t0), resumes, cancels, sw.Resumes(), sw.Cancellations())
	if sw.Resumes() == 0 {
		t.Errorf("the slow watcher never fell behind (no resume): the test did not exercise it")
	}
	t.Logf("server-side slow_consumer cancellations in this process: %v", cancelledMetric(t, "slow_consumer")-slowBefore)
	for _, w := range ws {
		w.Stop()
	}
	readers.Wait()
}
