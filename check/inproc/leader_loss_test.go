package inproc_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/inproc"
)

// TestRecoversAfterLeaderLoss aims at what `latchkey check --in-process`
// (seed 7, twice; seed 20261125) once showed: after the node leading
// shard 0's stream was shut down and restarted, the deployment stayed
// degraded until the next fault, 7-10 s later (throughput a tenth, 5% of
// key-value requests timing out, stale gets 9-10 s behind: a storage view
// whose consumer stalled, docs/DECISIONS.md "Stalled views are probed").
// It shuts the leader down five times, 6 s apart; after each, key-value
// operations must be answered again, stale gets must not lag by seconds,
// and every check must pass.
func TestRecoversAfterLeaderLoss(t *testing.T) {
	ctx := context.Background()
	d, err := inproc.Start(ctx, inproc.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// The leader of shard 0's stream, five times, with a node loss just
	// before the first: the degraded state came after some of these only.
	sched := check.Schedule{Events: []check.Event{
		{At: 3 * time.Second, Hold: 2200 * time.Millisecond, Fault: check.Fault{Kind: inproc.KillNode, Target: 0}},
	}}
	for i := range 5 {
		sched.Events = append(sched.Events, check.Event{At: 7400*time.Millisecond + time.Duration(i)*9*time.Second,
			Hold: 3 * time.Second, Fault: check.Fault{Kind: inproc.KillStreamLeader, Target: 0}})
	}
	rep, err := check.Run(ctx, check.Config{
		Duration: 60 * time.Second, Seed: 7, Connect: d.Connect, Injector: d, Schedule: &sched,
		Progress: testWriter{t}, OutDir: t.TempDir(),
	})
	if rep != nil {
		rep.Print(testWriter{t})
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range rep.Windows {
		if a := 100 * float64(w.KV.OK+w.KV.Failed) / float64(max(w.KV.N(), 1)); strings.HasPrefix(w.Name, "after") && a < 99 {
			t.Errorf("%s (%.1fs-%.1fs): only %.1f%% of key-value operations answered, %.0f ops/s",
				w.Name, w.From.Seconds(), w.To.Seconds(), a, w.Throughput)
		}
	}
	if rep.StaleMaxLag > 3*time.Second {
		t.Errorf("a stale get lagged %s behind an acknowledged write", rep.StaleMaxLag)
	}
}
