package tests

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/natstest"
	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/tests/suite"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"
)

// BenchmarkWatch measures, on one embedded server with one storage
// instance serving 3 shards: put-to-event latency (p50/p99 over every
// watcher's receipt of every put, one put at a time) with 1, 100 and 1000
// watchers of every key; the events per second the instance delivers to
// them while 16 writers put as fast as they can; and the heap each watch
// costs (3 feeds: one per shard). Watchers are raw subscriptions on their
// deliver inboxes, so the figures are the server side's.
//
//	go test -run '^$' -bench BenchmarkWatch -benchtime 200x ./tests/
func BenchmarkWatch(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) { benchWatch(b, n) })
	}
}

func benchWatch(b *testing.B, watchers int) {
	srv := natstest.Server(b)
	nc := natstest.Connect(b, srv.ClientURL())
	suite.New(b, nc, suite.Options{Shards: 3})
	c := client.New(nc)
	ctx := context.Background()
	sink := natstest.Connect(b, srv.ClientURL())

	var (
		mu        sync.Mutex
		sent      = map[string]time.Time{}   // key@revision -> put start
		recv      = map[string][]time.Time{} // key@revision -> receipts
		got       = map[string]int{}
		measuring = true
		arrived   = make(chan string, 1024)
		events    atomic.Int64
	)
	_, err := sink.Subscribe("_INBOX.bench.>", func(m *nats.Msg) {
		ev := &pb.WatchEvent{}
		if proto.Unmarshal(m.Data, ev) != nil || ev.Type != pb.WatchEventType_WATCH_EVENT_TYPE_PUT {
			return
		}
		events.Add(1)
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if !measuring {
			return
		}
		// An event may arrive before the put's reply: keep the time,
		// subtract the put's start once it is known.
		// Revisions are per shard: a put is named by key and revision.
		id := fmt.Sprint(ev.Key, "@", ev.Revision)
		recv[id] = append(recv[id], now)
		if got[id]++; got[id] == watchers {
			arrived <- id
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	_ = sink.Flush()

	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var ids []string
	for i := range watchers {
		req := &pb.WatchRequest{Deliver: fmt.Sprintf("_INBOX.bench.%d", i)}
		data, _ := proto.Marshal(req)
		reply, err := nc.Request("latchkey.kv.watch", data, 10*time.Second)
		if err != nil || reply.Header.Get("Nats-Service-Error-Code") != "" {
			b.Fatalf("watch %d: %v %v", i, err, reply)
		}
		resp := &pb.WatchResponse{}
		_ = proto.Unmarshal(reply.Data, resp)
		ids = append(ids, resp.WatchId)
	}
	// Keepalives, or the feeds end after 30 s.
	kctx, kcancel := context.WithCancel(ctx)
	defer kcancel()
	go func() {
		for {
			select {
			case <-kctx.Done():
				return
			case <-time.After(10 * time.Second):
			}
			for _, id := range ids {
				data, _ := proto.Marshal(&pb.WatchKeepaliveRequest{WatchId: id})
				_ = nc.Publish("latchkey.watchctl."+id+".keepalive", data)
			}
		}
	}()
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	perWatch := float64(int64(after.HeapInuse)-int64(before.HeapInuse)) / float64(watchers)

	// Latency: one put at a time, each waited for at every watcher.
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		key := fmt.Sprintf("k%d", i%64)
		rev, err := c.Put(ctx, key, []byte("v"))
		if err != nil {
			b.Fatal(err)
		}
		id := fmt.Sprint(key, "@", rev)
		mu.Lock()
		sent[id] = t0
		mu.Unlock()
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			mu.Lock()
			n := got[id]
			mu.Unlock()
			b.Fatalf("put %s: %d of %d watchers got it within 10s", id, n, watchers)
		}
	}
	b.StopTimer()
	mu.Lock()
	measuring = false
	var lats []time.Duration
	for rev, ts := range recv {
		for _, at := range ts {
			lats = append(lats, at.Sub(sent[rev]))
		}
	}
	mu.Unlock()
	slices.Sort(lats)
	p50, p99 := lats[len(lats)/2], lats[len(lats)*99/100]

	// Throughput: 16 writers for 3 s, events delivered per second.
	start := events.Load()
	t0 := time.Now()
	var wg sync.WaitGroup
	for w := range 16 {
		wg.Go(func() {
			for i := 0; time.Since(t0) < 3*time.Second; i++ {
				_, _ = c.Put(ctx, fmt.Sprintf("t%d-%d", w, i%32), []byte("v"))
			}
		})
	}
	wg.Wait()
	time.Sleep(500 * time.Millisecond) // let queued events drain
	rate := float64(events.Load()-start) / time.Since(t0).Seconds()

	b.ReportMetric(float64(p50.Microseconds()), "p50-us")
	b.ReportMetric(float64(p99.Microseconds()), "p99-us")
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(perWatch, "heap-B/watch")
}
