package storage

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
)

// BenchmarkViewMemory reports the heap a view needs per key for 100-byte
// entries (20-byte key, 80-byte value), keys arriving in key order and in
// random order; the budget is 3x the raw bytes.
func BenchmarkViewMemory(b *testing.B) {
	b.Run("ordered", func(b *testing.B) { benchViewMemory(b, false) })
	b.Run("random", func(b *testing.B) { benchViewMemory(b, true) })
}

func benchViewMemory(b *testing.B, shuffle bool) {
	const n = 200_000
	val := make([]byte, 80)
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}
	if shuffle {
		rand.New(rand.NewPCG(1, 2)).Shuffle(n, func(i, j int) { order[i], order[j] = order[j], order[i] })
	}
	for range b.N {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		v := newView()
		for i, k := range order {
			v.apply(fmt.Sprintf("key:%016d", k), true, uint64(i+1), revInfo{}, false, false, false, false, 0, true, val, "")
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "heapB/key")
		runtime.KeepAlive(v)
	}
}
