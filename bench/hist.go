package bench

import (
	"math"
	"math/bits"
	"time"
)

// subBits sets the histogram's precision: every power of two of
// nanoseconds is split into 2^subBits linear buckets, so a recorded value
// is off by at most 1/2^subBits (0.8%), the HDR histogram layout.
const subBits = 7

const subCount = 1 << subBits

// Histogram counts latencies in log-linear buckets. It is not safe for
// concurrent use: every client records into its own and the runner merges
// them, so recording never contends.
type Histogram struct {
	counts [64 * subCount]uint64
	n      uint64
	sum    time.Duration
	max    time.Duration
}

// bucket maps a nanosecond value to its bucket index.
func bucket(v uint64) int {
	if v < subCount {
		return int(v)
	}
	exp := bits.Len64(v) - subBits // >= 1
	return exp*subCount + int(v>>uint(exp-1)) - subCount
}

// lowest returns the smallest value that falls into bucket i.
func lowest(i int) uint64 {
	if i < subCount {
		return uint64(i)
	}
	exp := i / subCount
	return uint64(i%subCount+subCount) << uint(exp-1)
}

// Record adds one latency.
func (h *Histogram) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[bucket(uint64(d))]++
	h.n++
	h.sum += d
	if d > h.max {
		h.max = d
	}
}

// Merge adds every count of o to h.
func (h *Histogram) Merge(o *Histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
	h.sum += o.sum
	if o.max > h.max {
		h.max = o.max
	}
}

// Count is the number of recorded latencies.
func (h *Histogram) Count() uint64 { return h.n }

// Mean is the average latency, 0 when empty.
func (h *Histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// Max is the largest latency recorded.
func (h *Histogram) Max() time.Duration { return h.max }

// Quantile returns the latency below which a fraction q (0..1) of the
// recorded values fall, as the midpoint of its bucket.
func (h *Histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := lowest(i), lowest(i+1)
			v := time.Duration((lo + hi) / 2)
			if v > h.max {
				v = h.max
			}
			return v
		}
	}
	return h.max
}
