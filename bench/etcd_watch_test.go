package bench

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// BenchmarkEtcdWatch is the etcd side of tests.BenchmarkWatch
// (docs/BENCHMARKS.md, "Watch"): an embedded single-member etcd, N watches
// of every key (prefix ""), one put at a time, put start to the event's
// arrival at every watcher.
//
//	go test -run '^$' -bench BenchmarkEtcdWatch -benchtime 200x ./bench/
func BenchmarkEtcdWatch(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("watchers=%d", n), func(b *testing.B) { benchEtcdWatch(b, n) })
	}
}

func benchEtcdWatch(b *testing.B, watchers int) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	x, err := StartEtcd(ctx, b.TempDir(), 4)
	if err != nil {
		b.Fatal(err)
	}
	defer x.Close()
	var (
		mu      sync.Mutex
		sent    = map[int64]time.Time{}
		recv    = map[int64][]time.Time{}
		arrived = make(chan int64, 1024)
	)
	for i := range watchers {
		ch := x.clients[i%len(x.clients)].Watch(ctx, "", clientv3.WithPrefix())
		go func() {
			for resp := range ch {
				now := time.Now()
				for _, ev := range resp.Events {
					rev := ev.Kv.ModRevision
					mu.Lock()
					recv[rev] = append(recv[rev], now)
					if len(recv[rev]) == watchers {
						arrived <- rev
					}
					mu.Unlock()
				}
			}
		}()
	}
	time.Sleep(500 * time.Millisecond) // watches registered
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		resp, err := x.clients[0].Put(ctx, fmt.Sprintf("k%d", i%64), "v")
		if err != nil {
			b.Fatal(err)
		}
		mu.Lock()
		sent[resp.Header.Revision] = t0
		mu.Unlock()
		select {
		case <-arrived:
		case <-time.After(10 * time.Second):
			b.Fatalf("put %d not seen by every watcher in 10s", resp.Header.Revision)
		}
	}
	b.StopTimer()
	mu.Lock()
	var lats []time.Duration
	for rev, ts := range recv {
		if t0, ok := sent[rev]; ok {
			for _, at := range ts {
				lats = append(lats, at.Sub(t0))
			}
		}
	}
	mu.Unlock()
	slices.Sort(lats)
	b.ReportMetric(float64(lats[len(lats)/2].Microseconds()), "p50-us")
	b.ReportMetric(float64(lats[len(lats)*99/100].Microseconds()), "p99-us")
}
