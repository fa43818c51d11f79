package bench_test

import (
	"testing"
	"time"

	"github.com/latchkey/latchkey/bench"
)

func TestHistogramQuantiles(t *testing.T) {
	var h bench.Histogram
	for i := 1; i <= 100000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	for _, tc := range []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 50 * time.Millisecond},
		{0.99, 99 * time.Millisecond},
		{0.999, 99900 * time.Microsecond},
		{1, 100 * time.Millisecond},
	} {
		got := h.Quantile(tc.q)
		if diff := float64(got-tc.want) / float64(tc.want); diff > 0.01 || diff < -0.01 {
			t.Errorf("Quantile(%v) = %v, want %v within 1%%", tc.q, got, tc.want)
		}
	}
	if h.Count() != 100000 {
		t.Errorf("Count = %d, want 100000", h.Count())
	}
	var m bench.Histogram
	m.Record(time.Second)
	m.Merge(&h)
	if m.Max() != time.Second || m.Count() != 100001 {
		t.Errorf("after Merge: max %v count %d, want 1s and 100001", m.Max(), m.Count())
	}
}

func TestHistogramSmallValues(t *testing.T) {
	var h bench.Histogram
	for _, v := range []time.Duration{0, 1, 5, 127, 128, 129} {
		h.Record(v)
	}
	if got := h.Quantile(0.5); got > 6 {
		t.Errorf("median of tiny values = %v, want <= 6ns", got)
	}
}
