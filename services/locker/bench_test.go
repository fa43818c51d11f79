package locker_test

import (
	"context"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkAcquireRelease: one lock.acquire (try once) plus lock.release
// per op, each goroutine on its own name. Compare with BenchmarkKVCreateDelete.
func BenchmarkAcquireRelease(b *testing.B) {
	nc, l := solo(b)
	startLocker(b, nc, 1)
	var id atomic.Int64
	b.SetParallelism(16) // 32 goroutines on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		name := fmt.Sprintf("bench-%d", id.Add(1))
		for pb.Next() {
			r, err := l.acquire(name, "bench", 5000, 0)
			if err != nil {
				b.Error(err)
				return
			}
			if err := l.release(name, r.Token); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkKVCreateDelete is the raw JetStream KV floor for a lock pair:
// kv.Create (with a TTL) plus kv.Delete of one key per goroutine.
func BenchmarkKVCreateDelete(b *testing.B) {
	s := natstest.Server(b)
	nc := natstest.Connect(b, s.ClientURL())
	js, _ := jetstream.New(nc)
	ctx := context.Background()
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "raw", History: 1, LimitMarkerTTL: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	var id atomic.Int64
	b.SetParallelism(16) // 32 goroutines on 2 cores
	b.RunParallel(func(pb *testing.PB) {
		key := fmt.Sprintf("bench-%d", id.Add(1))
		for pb.Next() {
			if _, err := kv.Create(ctx, key, []byte("x"), jetstream.KeyTTL(5*time.Second)); err != nil {
				b.Error(err)
				return
			}
			if err := kv.Delete(ctx, key); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandoff measures release -> queued waiter holds the lock: two
// goroutines pass one lock back and forth, each waiting (wait_ms) while
// the other holds it. Reported as p50/p99 of the handoff.
func BenchmarkHandoff(b *testing.B) {
	nc, l := solo(b)
	startLocker(b, nc, 1)
	const name = "handoff"
	var released atomic.Int64 // UnixNano of the last release
	lat := make([]time.Duration, 0, b.N)
	latCh := make(chan time.Duration, b.N+2)
	tok := l.mustAcquire(name, "a", 30000)
	done := make(chan struct{})
	b.ResetTimer()
	go func() { // the second player
		defer close(done)
		for i := 0; i < b.N/2; i++ {
			r, err := l.acquire(name, "b", 30000, 10000)
			if err != nil {
				b.Error(err)
				return
			}
			latCh <- time.Since(time.Unix(0, released.Load()))
			time.Sleep(2 * time.Millisecond) // let the other side queue
			released.Store(time.Now().UnixNano())
			if err := l.release(name, r.Token); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	for i := 0; i < b.N-b.N/2; i++ {
		time.Sleep(2 * time.Millisecond)
		released.Store(time.Now().UnixNano())
		if err := l.release(name, tok); err != nil {
			b.Fatal(err)
		}
		if i == b.N-b.N/2-1 {
			break
		}
		r, err := l.acquire(name, "a", 30000, 10000)
		if err != nil {
			b.Fatal(err)
		}
		latCh <- time.Since(time.Unix(0, released.Load()))
		tok = r.Token
	}
	<-done
	b.StopTimer()
	close(latCh)
	for d := range latCh {
		lat = append(lat, d)
	}
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "handoff-p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "handoff-p99-us")
}
