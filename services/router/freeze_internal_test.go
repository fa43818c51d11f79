package router

import (
	"testing"
	"time"
)

func TestFreezeHistQuantiles(t *testing.T) {
	var h freezeHist
	if at, largest := h.quantile(0.99); at != 0 || largest != 0 {
		t.Fatalf("empty: %v %v", at, largest)
	}
	for i := 1; i <= 1000; i++ {
		h.observe(time.Duration(i) * time.Millisecond) // 1 ms .. 1 s
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 500 * time.Millisecond}, {0.99, 990 * time.Millisecond}, {1, time.Second}} {
		at, largest := h.quantile(c.q)
		if largest != time.Second {
			t.Fatalf("largest %v, want 1s", largest)
		}
		// A bucket's upper bound: at or above the true quantile, within 25%.
		if at < c.want || float64(at) > 1.25*float64(c.want) {
			t.Errorf("q%.2f = %v, want within [%v, 1.25x]", c.q, at, c.want)
		}
	}
	h.observe(time.Hour) // beyond the last bucket: counted there, max exact
	if at, largest := h.quantile(1); at != time.Hour || largest != time.Hour {
		t.Errorf("q1 after an hour-long freeze: %v %v", at, largest)
	}
	h.reset()
	if at, _ := h.quantile(0.5); at != 0 {
		t.Errorf("after reset: %v", at)
	}
}
