package observability_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/latchkey/latchkey/kit/telemetry"
)

// sample sums the current values of a metric over the series whose labels
// include match (nil: all series). Histograms count observations.
func sample(t *testing.T, name string, match map[string]string) float64 {
	t.Helper()
	families, err := telemetry.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

// TestShardAndLockMetricsCountWhatHappened checks the metrics' values, not
// just their presence: live keys per shard follow puts and deletes, every
// shard operation is counted with its outcome, a stale fence is counted
// once, and lock outcomes land in their series.
func TestShardAndLockMetricsCountWhatHappened(t *testing.T) {
	d := startSuite(t)
	c := client.New(d.nc)
	ctx := testCtx(t, 20*time.Second)
	before := map[string]float64{
		"ops":       sample(t, "latchkey_shard_operations_total", nil),
		"conflicts": sample(t, "latchkey_shard_operations_total", map[string]string{"outcome": "conflict"}),
		"fences":    sample(t, "latchkey_fence_rejections_total", nil),
		"acquired":  sample(t, "latchkey_lock_acquisitions_total", map[string]string{"outcome": "acquired"}),
		"contended": sample(t, "latchkey_lock_acquisitions_total", map[string]string{"outcome": "contended"}),
		"released":  sample(t, "latchkey_lock_releases_total", map[string]string{"outcome": "ok"}),
	}
	const keys, deleted = 30, 10
	for i := range keys {
		if _, err := c.Put(ctx, fmt.Sprintf("m:%d", i), []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	for i := range deleted {
		if _, _, err := c.Delete(ctx, fmt.Sprintf("m:%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Put(ctx, "m:0", []byte("v"), client.IfRevision(12345)); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("CAS on a deleted key: %v", err)
	}
	held, err := c.Acquire(ctx, "m-lock", client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, "m-lock", client.WithoutKeepAlive()); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("second acquire: %v", err)
	}
	if err := held.Release(ctx); err != nil {
		t.Fatal(err)
	}
	fencedWrite(t, ctx, c, "m-fence", "m:fenced") // 2 acquires, 2 releases, 2 puts (1 stale)

	// Views apply the stream asynchronously: wait for the count to settle.
	want := float64(keys - deleted + 1)
	for deadline := time.Now().Add(5 * time.Second); sample(t, "latchkey_shard_keys", nil) != want; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("latchkey_shard_keys sums to %v over the shards, want %v", sample(t, "latchkey_shard_keys", nil), want)
		}
	}
	for shard := range 3 {
		if n := sample(t, "latchkey_shard_keys", map[string]string{"shard": fmt.Sprint(shard)}); n == 0 {
			t.Errorf("shard %d reports no keys; %v keys cannot all hash elsewhere", shard, want)
		}
	}
	tests := []struct {
		what      string
		got, want float64
	}{
		{"shard operations", sample(t, "latchkey_shard_operations_total", nil) - before["ops"], keys + deleted + 1 + 2},
		{"conflicts", sample(t, "latchkey_shard_operations_total", map[string]string{"outcome": "conflict"}) - before["conflicts"], 2},
		{"fence rejections", sample(t, "latchkey_fence_rejections_total", nil) - before["fences"], 1},
		{"acquired", sample(t, "latchkey_lock_acquisitions_total", map[string]string{"outcome": "acquired"}) - before["acquired"], 3},
		{"contended", sample(t, "latchkey_lock_acquisitions_total", map[string]string{"outcome": "contended"}) - before["contended"], 1},
		{"released", sample(t, "latchkey_lock_releases_total", map[string]string{"outcome": "ok"}) - before["released"], 3},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("%s: counted %v, want %v", tt.what, tt.got, tt.want)
		}
	}
}
