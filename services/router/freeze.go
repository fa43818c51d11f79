package router

import (
	"math"
	"sync"
	"time"
)

// freezeHist counts how long keys were unavailable during a move: from
// the moment the mover sends a key's moved marker (reads and writes of the
// key on its old shard answer "moved" from then) until its copy on the new
// shard is acknowledged (the new shard serves it). Buckets grow by 1.25x
// from 10 us, so a quantile is exact to within 25%, in fixed memory
// however many keys move.
type freezeHist struct {
	mu     sync.Mutex
	counts [freezeBuckets]uint64
	n      uint64
	max    time.Duration
}

const (
	freezeBuckets = 80 // 10 us * 1.25^79 is about 4.4 min: anything longer lands in the last
	freezeFirst   = 10 * time.Microsecond
	freezeGrowth  = 1.25
)

func (h *freezeHist) observe(d time.Duration) {
	i := 0
	if d > freezeFirst {
		i = min(freezeBuckets-1, int(math.Ceil(math.Log(float64(d)/float64(freezeFirst))/math.Log(freezeGrowth))))
	}
	h.mu.Lock()
	h.counts[i]++
	h.n++
	h.max = max(h.max, d)
	h.mu.Unlock()
}

// quantile returns the upper bound of the bucket holding quantile q (at
// most the largest observed), and the largest observed; zeros when empty.
func (h *freezeHist) quantile(q float64) (at, largest time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.n == 0 {
		return 0, 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= max(rank, 1) {
			if i == freezeBuckets-1 {
				return h.max, h.max // the open-ended last bucket
			}
			bound := time.Duration(float64(freezeFirst) * math.Pow(freezeGrowth, float64(i)))
			return min(bound, h.max), h.max
		}
	}
	return h.max, h.max
}

func (h *freezeHist) reset() {
	h.mu.Lock()
	h.counts, h.n, h.max = [freezeBuckets]uint64{}, 0, 0
	h.mu.Unlock()
}
