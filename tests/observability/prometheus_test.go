package observability_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
)

func runOutput(name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, name, args...).CombinedOutput()
}

// promResult is promtool's JSON output of an instant query.
type promResult []struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query evaluates expr with promtool against the Prometheus at server.
func query(promtool, server, expr string) (promResult, error) {
	out, err := runOutput(promtool, "query", "instant", "-o", "json", server, expr)
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var r promResult
	if err := json.Unmarshal(out, &r); err != nil {
		return nil, fmt.Errorf("promtool output is not a vector (%v): %s", err, out)
	}
	return r, nil
}

// TestDashboardQueriesAgainstPrometheus runs a real Prometheus scraping a
// running suite under load that exercises every metric (KV traffic with
// conflicts, fenced writes and a stale fence, lock contention, waits, an
// expiry) and evaluates every panel query of every dashboard with
// promtool. A query that errors or returns nothing fails the test: the
// panel would be broken or empty in Grafana.
func TestDashboardQueriesAgainstPrometheus(t *testing.T) {
	const hint = "install Debian's prometheus package (apt-get install prometheus), or set LATCHKEY_PROMETHEUS_BIN"
	prom := needBinary(t, "prometheus", hint, os.Getenv("LATCHKEY_PROMETHEUS_BIN"), "/usr/bin/prometheus")
	promtool := needBinary(t, "promtool", hint, os.Getenv("LATCHKEY_PROMTOOL_BIN"), filepath.Join(filepath.Dir(prom), "promtool"), "/usr/bin/promtool")
	queries := promQueries(t)
	if t.Failed() {
		return
	}

	d := startSuite(t)
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: latchkey-dev
    static_configs:
      - targets: [%q]
`, d.metrics)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	server := "http://" + loopback(port)
	runProcess(t, dir, prom, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), "--web.listen-address="+loopback(port),
		"--storage.tsdb.retention.time=1h")
	waitHTTP(t, server+"/-/ready", 30*time.Second)

	ctx, stop := context.WithCancel(testCtx(t, 2*time.Minute))
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { kvLoad(ctx, client.New(d.nc)) })
	wg.Go(func() { lockLoad(ctx, client.New(d.nc)) })
	lockScenario(t, ctx, client.New(d.nc))

	// Wait until Prometheus has scraped the scenario's effects twice
	// (rates need two samples), then every panel must have data.
	deadline := time.Now().Add(45 * time.Second)
	for {
		r, err := query(promtool, server, `count_over_time(latchkey_fence_rejections_total[30s]) >= 3`)
		if err != nil {
			t.Fatal(err)
		}
		if len(r) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Prometheus never scraped the stale-fence rejection three times")
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The scenario's rare events reached Prometheus, not just their series.
	for _, expr := range []string{
		`latchkey_lock_expiries_total`,
		`sum(latchkey_fence_rejections_total)`,
		`latchkey_lock_acquisitions_total{outcome="contended"}`,
		`latchkey_lock_renewals_total{outcome="conflict"}`,
		`sum(latchkey_lock_wait_seconds_count)`,
		`sum(latchkey_shard_operations_total{outcome="conflict"})`,
	} {
		r, err := query(promtool, server, expr+" > 0")
		if err != nil || len(r) == 0 {
			t.Errorf("%s: want > 0, got %v (%v)", expr, r, err)
		}
	}
	for _, q := range queries {
		var (
			r   promResult
			err error
		)
		// A series that appeared last may still lack its second sample;
		// an error is final.
		for range 10 {
			if r, err = query(promtool, server, q.expr); err != nil || len(r) > 0 {
				break
			}
			time.Sleep(time.Second)
		}
		switch {
		case err != nil:
			t.Errorf("%s: query error: %v\n  %s", q.where, err, q.expr)
		case len(r) == 0:
			t.Errorf("%s: empty result\n  %s", q.where, q.expr)
		default:
			t.Logf("%s: %d series, e.g. %v = %v", q.where, len(r), r[0].Metric, r[0].Value[1])
		}
	}
	t.Logf("evaluated %d panel queries", len(queries))
}

func waitHTTP(t *testing.T, url string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s: %v", url, within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// kvLoad drives KV traffic over all shards until ctx ends: puts, reads of
// both consistencies, deletes, scans, and compare-and-set conflicts.
func kvLoad(ctx context.Context, c *client.Client) {
	for i := 0; ctx.Err() == nil; i++ {
		key := "load:" + strconv.Itoa(i%200)
		rev, _ := c.Put(ctx, key, []byte("value"))
		_, _ = c.Get(ctx, key)
		_, _ = c.Get(ctx, key, client.Stale())
		if i%5 == 0 {
			_, _ = c.Put(ctx, key, []byte("cas"), client.IfRevision(rev+1000)) // 409
		}
		if i%7 == 0 {
			_, _, _ = c.Delete(ctx, key)
		}
		if i%20 == 0 {
			_, _ = c.Scan(ctx, "load:", client.Limit(10))
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// lockLoad keeps a lock contended until ctx ends: two callers take turns,
// each waiting for the other, and a third tries without waiting.
func lockLoad(ctx context.Context, c *client.Client) {
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for ctx.Err() == nil {
				l, err := c.Acquire(ctx, "hot-lock", client.WithLeaseTTL(2*time.Second), client.WithWait(3*time.Second), client.WithoutKeepAlive())
				if err != nil {
					continue
				}
				time.Sleep(20 * time.Millisecond)
				_ = l.Release(context.WithoutCancel(ctx))
			}
		})
	}
	for ctx.Err() == nil {
		if l, err := c.Acquire(ctx, "hot-lock", client.WithoutKeepAlive()); err == nil {
			_ = l.Release(context.WithoutCancel(ctx))
		}
		time.Sleep(50 * time.Millisecond)
	}
	wg.Wait()
}

// lockScenario makes the rare lock events happen once: a holder that stops
// renewing while another caller waits (an expiry), fenced writes by both
// holders, the old holder's write refused as a stale fence, and renew and
// release with the lost token.
func lockScenario(t *testing.T, ctx context.Context, c *client.Client) {
	t.Helper()
	old, err := c.Acquire(ctx, "obs-lock", client.WithLeaseTTL(time.Second), client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "obs:fenced", []byte("1"), client.WithFence("obs-lock", old.Token())); err != nil {
		t.Fatal(err)
	}
	// The old holder never renews: the waiter gets the lock by expiry.
	cur, err := c.Acquire(ctx, "obs-lock", client.WithLeaseTTL(10*time.Second), client.WithWait(10*time.Second), client.WithoutKeepAlive())
	if err != nil {
		t.Fatalf("waiting for an expired lease: %v", err)
	}
	if _, err := c.Put(ctx, "obs:fenced", []byte("2"), client.WithFence("obs-lock", cur.Token())); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "obs:fenced", []byte("late"), client.WithFence("obs-lock", old.Token())); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("the expired holder's write: %v, want a stale-fence conflict", err)
	}
	if _, err := c.Renew(ctx, "obs-lock", old.Token(), time.Second); !errors.Is(err, client.ErrConflict) {
		t.Fatalf("renew with a lost token: %v, want a conflict", err)
	}
	if err := cur.Release(ctx); err != nil {
		t.Fatal(err)
	}
}
