package consistenthash_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/consistenthash"
)

// The requirements of the router's design: over 1M random keys the busiest
// shard holds at most 1.05x the mean, and adding or removing one shard
// moves at most 1.1x the ideal fraction of keys, for every N in 3..64.
const (
	numKeys     = 1_000_000
	maxImbal    = 1.05
	maxMoveRate = 1.10
	minShards   = 3
	maxShards   = 64
)

func ids(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.Itoa(i)
	}
	return out
}

// keys returns the same 1M random 16-byte keys on every run.
func keys() []string {
	r := rand.New(rand.NewPCG(1, 2))
	out := make([]string, numKeys)
	b := make([]byte, 16)
	for i := range out {
		for j := range b {
			b[j] = byte(r.UintN(256))
		}
		out[i] = string(b)
	}
	return out
}

func assign(m *consistenthash.Map, ks []string) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = m.Get(k)
	}
	return out
}

func maxOverMean(owners []string, n int) float64 {
	count := map[string]int{}
	for _, o := range owners {
		count[o]++
	}
	busiest := 0
	for _, c := range count {
		busiest = max(busiest, c)
	}
	return float64(busiest) / (float64(len(owners)) / float64(n))
}

// TestBalanceAndMovement measures load balance and key movement for every
// shard count 3..64 and fails if either requirement is violated. Moved keys
// must also move only to an added shard or from a removed one.
func TestBalanceAndMovement(t *testing.T) {
	if testing.Short() {
		t.Skip("builds 125 tables")
	}
	ks := keys()
	var worstImbal, worstAdd, worstRemove float64
	var buildN64 time.Duration
	prev := assign(consistenthash.New(ids(minShards)), ks)
	for n := minShards; n <= maxShards; n++ {
		imbal := maxOverMean(prev, n)

		// Add shard n (ids 0..n).
		start := time.Now()
		next := assign(consistenthash.New(ids(n+1)), ks)
		if n+1 == maxShards {
			buildN64 = time.Since(start)
		}
		added := strconv.Itoa(n)
		moved := 0
		for i := range ks {
			if prev[i] != next[i] {
				moved++
				if next[i] != added {
					t.Fatalf("N=%d add: key moved %s -> %s, not to the new shard", n, prev[i], next[i])
				}
			}
		}
		addRatio := float64(moved) / numKeys * float64(n+1)

		// Remove a shard from the middle (ids 0..n-1 without n/2).
		gone := strconv.Itoa(n / 2)
		rest := slices.DeleteFunc(ids(n), func(s string) bool { return s == gone })
		after := assign(consistenthash.New(rest), ks)
		moved = 0
		for i := range ks {
			if prev[i] != after[i] {
				moved++
				if prev[i] != gone {
					t.Fatalf("N=%d remove: key moved %s -> %s, not from the removed shard", n, prev[i], after[i])
				}
			}
		}
		removeRatio := float64(moved) / numKeys * float64(n)

		t.Logf("N=%2d max/mean=%.3f move add=%.3f remove=%.3f", n, imbal, addRatio, removeRatio)
		worstImbal, worstAdd, worstRemove = max(worstImbal, imbal), max(worstAdd, addRatio), max(worstRemove, removeRatio)
		if imbal > maxImbal {
			t.Errorf("N=%d: busiest shard holds %.3fx the mean; the limit is %.2fx", n, imbal, maxImbal)
		}
		if addRatio > maxMoveRate || removeRatio > maxMoveRate {
			t.Errorf("N=%d: moved %.3fx (add) / %.3fx (remove) the ideal; the limit is %.2fx", n, addRatio, removeRatio, maxMoveRate)
		}
		prev = next
	}
	t.Logf("worst over N=%d..%d: max/mean=%.3f move add=%.3f remove=%.3f; New+1M Gets at N=64: %v",
		minShards, maxShards, worstImbal, worstAdd, worstRemove, buildN64)
}

func TestEdgeCases(t *testing.T) {
	if got := consistenthash.New(nil).Get("k"); got != "" {
		t.Errorf("empty map: Get = %q, want \"\"", got)
	}
	a := consistenthash.New([]string{"b", "a", "c", "a"})
	b := consistenthash.New([]string{"c", "b", "a"})
	if got := a.Shards(); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Errorf("Shards = %v, want sorted and deduplicated", got)
	}
	for i := range 1000 {
		k := fmt.Sprint("key-", i)
		if a.Get(k) != b.Get(k) {
			t.Fatalf("order of ids changed the owner of %q", k)
		}
	}
}

func BenchmarkGet(b *testing.B) {
	m := consistenthash.New(ids(16))
	key := "user:0000000042:"
	b.ReportAllocs()
	for b.Loop() {
		_ = m.Get(key)
	}
}

// BenchmarkNew measures building the map at the shard counts a
// deployment uses: New runs at every router start and shard-map change, so
// its cost is a start-up latency, not a per-request one.
func BenchmarkNew(b *testing.B) {
	for _, n := range []int{3, 16, 64} {
		b.Run(fmt.Sprintf("shards=%d", n), func(b *testing.B) {
			shards := ids(n)
			b.ReportAllocs()
			for b.Loop() {
				consistenthash.New(shards)
			}
		})
	}
}

func ExampleMap_Get() {
	m := consistenthash.New([]string{"0", "1", "2"})
	shard := m.Get("user:42")
	fmt.Println(shard == consistenthash.New([]string{"2", "1", "0"}).Get("user:42"))
	// Output: true
}
