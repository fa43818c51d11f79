package inproc_test

import (
	"context"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/inproc"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/storage"
)

// edgeRun runs the edge workloads alone (with two random workers beside
// them, so the ordinary traffic's checks run too) against an in-process
// deployment started with the given Unsafe switches, without faults: the
// aimed instants are the point, and faults would only blur them. Short and
// dense, so each case costs CI about half a minute.
func edgeRun(t *testing.T, o inproc.Options, edges check.Edges) *check.Report {
	t.Helper()
	ctx := context.Background()
	o.Dir = t.TempDir()
	d, err := inproc.Start(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	began := time.Now()
	rep, err := check.Run(ctx, check.Config{
		Duration: 12 * time.Second,
		Clients:  2,
		Keys:     8,
		Locks:    2,
		Seed:     uint64(time.Now().UnixNano()),
		Edges:    edges,
		Connect:  d.Connect,
		OutDir:   t.TempDir(),
	})
	if rep == nil {
		t.Fatalf("no report: %v", err)
	}
	rep.Print(testWriter{t})
	t.Logf("%d operations, %d violations, %.1fs in all", rep.Total.N(), len(rep.Violations), time.Since(began).Seconds())
	return rep
}

// TestEdgeCheckerFindsPlantedBugs plants each TTL-edge bug in the real
// services through their Unsafe switches and requires the check meant to
// catch it to report it; without a plant the same run must pass. (Until
// the services' TTL guard, renew guard and fence rules are wired, the
// code behaves as if every switch were on: then the unplanted case fails,
// and every planted one passes because the bug is there anyway.)
func TestEdgeCheckerFindsPlantedBugs(t *testing.T) {
	if testing.Short() {
		t.Skip("in-process runs")
	}
	cases := []struct {
		name  string
		o     inproc.Options
		edges check.Edges
		want  []string // each must report; nil = no violation at all
	}{
		{"no plant", inproc.Options{}, check.AllEdges(), nil},
		{"storage NoTTLGuard", inproc.Options{StorageUnsafe: storage.Unsafe{NoTTLGuard: true}},
			check.Edges{TTLWrites: true, Keys: 96}, []string{check.CheckDurability, check.CheckLinearizable}},
		{"locker NoRenewGuard", inproc.Options{LockerUnsafe: locker.Unsafe{NoRenewGuard: true}},
			check.Edges{Renewals: true, Keys: 64}, []string{check.CheckLockOverlap}},
		{"storage AllowFencedTTL", inproc.Options{StorageUnsafe: storage.Unsafe{AllowFencedTTL: true}},
			check.Edges{FenceTTL: true}, []string{check.CheckFence, check.CheckFenceRules}},
		{"storage NoFenceBounds", inproc.Options{StorageUnsafe: storage.Unsafe{NoFenceBounds: true}},
			check.Edges{ManyFences: true, FenceTTL: true}, []string{check.CheckFenceRules}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.want == nil {
				rep := edgeRun(t, c.o, c.edges)
				if len(rep.Violations) > 0 {
					t.Fatalf("%d violations without a planted bug: %v", len(rep.Violations), rep.Violations)
				}
				if rep.Total.OK < 500 {
					t.Fatalf("only %d operations succeeded", rep.Total.OK)
				}
				return
			}
			// A planted bug shows only when a write lands inside the
			// server's expiry pass, which a busy machine sometimes never
			// hits in one 12 s run (CI once saw 428 renewals at the
			// lease's end and no overlap): up to plantRuns runs must
			// between them report every wanted check.
			found := map[string]int{}
			for run := 1; run <= plantRuns; run++ {
				rep := edgeRun(t, c.o, c.edges)
				missing := 0
				for _, w := range c.want {
					found[w] += rep.Count(w)
					if found[w] == 0 {
						missing++
					}
				}
				if missing == 0 {
					break
				}
			}
			for _, w := range c.want {
				if found[w] == 0 {
					t.Errorf("planted %s: no %s violation in %d runs", c.name, w, plantRuns)
				} else {
					t.Logf("planted %s: %d %s violation(s)", c.name, found[w], w)
				}
			}
		})
	}
}

// plantRuns bounds the runs a planted bug gets to show itself in.
const plantRuns = 3
