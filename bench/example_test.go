package bench_test

import (
	"fmt"
	"time"

	"github.com/latchkey/latchkey/bench"
)

// A Histogram keeps latencies to within 0.8% in constant memory.
func ExampleHistogram() {
	var h bench.Histogram
	for i := 1; i <= 1000; i++ {
		h.Record(time.Duration(i) * time.Microsecond)
	}
	fmt.Println(h.Count(), h.Quantile(0.5).Round(10*time.Microsecond), h.Quantile(0.99).Round(10*time.Microsecond))
	// Output: 1000 500µs 990µs
}
