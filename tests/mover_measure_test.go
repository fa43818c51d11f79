package tests

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pb "github.com/latchkey/latchkey/proto/latchkey/v1"
	"github.com/latchkey/latchkey/services/router"
)

// TestReshardMeasure measures a 3 -> 4 move of LATCHKEY_RESHARD_KEYS keys
// of 100 B on one embedded server (R1), with 16 clients doing gets and
// puts throughout: keys moved against the ideal quarter, time, keys/s,
// and the clients' p99 before and during the move. A measurement, not a
// check: it runs only when the variable is set (docs/BENCHMARKS.md).
func TestReshardMeasure(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("LATCHKEY_RESHARD_KEYS"))
	if n <= 0 {
		t.Skip("set LATCHKEY_RESHARD_KEYS to measure a move")
	}
	e := newReshardEnv(t)
	val := make([]byte, 100)
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range 64 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(n); i = next.Add(1) - 1 {
				for e.call("kv.put", &pb.PutRequest{Key: fmt.Sprintf("key-%08d", i), Value: val}, &pb.PutResponse{}) != nil {
				}
			}
		})
	}
	wg.Wait()
	t.Logf("loaded %d keys in %v", n, time.Since(start).Round(time.Millisecond))

	var phase atomic.Int32 // 0 before, 1 during, 2 after
	var mu sync.Mutex
	lat := [3][]time.Duration{}
	errs := [3]int{}
	var stop atomic.Bool
	var cw sync.WaitGroup
	for c := range 16 {
		cw.Go(func() {
			for i := 0; !stop.Load(); i++ {
				key := fmt.Sprintf("key-%08d", (i*7919+c*104729)%n)
				t0 := time.Now()
				var err error
				if i%4 == 0 {
					err = e.call("kv.put", &pb.PutRequest{Key: key, Value: val}, &pb.PutResponse{})
				} else {
					err = e.call("kv.get", &pb.GetRequest{Key: key}, &pb.GetResponse{})
				}
				d, p := time.Since(t0), phase.Load()
				mu.Lock()
				lat[p] = append(lat[p], d)
				if err != nil {
					errs[p]++
				}
				mu.Unlock()
			}
		})
	}
	time.Sleep(2 * time.Second)
	phase.Store(1)
	t0 := time.Now()
	e.move("0", "1", "2", "3")
	took := time.Since(t0)
	phase.Store(2)
	time.Sleep(2 * time.Second)
	stop.Store(true)
	cw.Wait()
	got := &pb.ShardsGetResponse{}
	if err := e.call(router.AdminShardsGet, &pb.ShardsGetRequest{}, got); err != nil {
		t.Fatal(err)
	}
	moved := got.Move.KeysMoved
	t.Logf("move 3->4: %d keys moved (%.3f of the ideal %d) in %v: %.0f keys/s",
		moved, float64(moved)/(float64(n)/4), n/4, took.Round(time.Millisecond), float64(moved)/took.Seconds())
	t.Logf("per-key freeze (marker sent to copy acknowledged): p99 %v, longest %v",
		time.Duration(got.Move.FreezeP99Us)*time.Microsecond, time.Duration(got.Move.FreezeMaxUs)*time.Microsecond)
	for p, name := range []string{"before", "during", "after"} {
		l := lat[p]
		slices.Sort(l)
		if len(l) == 0 {
			continue
		}
		t.Logf("%s: %d ops (%.0f/s), p50 %v, p99 %v, max %v, %d errors", name, len(l),
			float64(len(l))/map[int]float64{0: 2, 1: took.Seconds(), 2: 2}[p],
			l[len(l)/2], l[len(l)*99/100], l[len(l)-1], errs[p])
	}
}
