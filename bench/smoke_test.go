package bench_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/bench"
)

// smokeSpec keeps the smoke small: it checks that every workload runs and
// succeeds, never how fast (no timing assertions).
var smokeSpec = bench.Spec{Keys: 200, ValueSize: 100, Dist: "zipfian", ScanLimit: 20}

const smokeRun = 200 * time.Millisecond

func checkResult(t *testing.T, r bench.Result) {
	t.Helper()
	if r.Ops == 0 {
		t.Errorf("%s on %s: no ops completed", r.Workload, r.System)
	}
	if r.Errors != 0 {
		t.Errorf("%s on %s: %d errors, first: %s", r.Workload, r.System, r.Errors, r.FirstError)
	}
}

func runAll(t *testing.T, ctx context.Context, s bench.System) {
	if err := bench.Preload(ctx, s, smokeSpec, 16); err != nil {
		t.Fatal(err)
	}
	for _, name := range bench.AllWorkloads {
		t.Run(s.Name()+"/"+name, func(t *testing.T) {
			w, err := bench.NewWorkload(name, s, smokeSpec)
			if err != nil {
				t.Fatal(err)
			}
			r, err := bench.Run(ctx, w, bench.RunConfig{Clients: 4, Duration: smokeRun})
			if err != nil {
				t.Fatal(err)
			}
			if name == bench.WScan && s.Name() == "redis" {
				if r.Ops != 0 || r.Errors == 0 {
					t.Errorf("redis scan: got %d ops and %d errors, want it refused", r.Ops, r.Errors)
				}
				return
			}
			r.System = s.Name()
			checkResult(t, r)
		})
	}
}

func TestSmokeLatchkeyAndFloors(t *testing.T) {
	ctx := context.Background()
	dep, err := bench.StartDeployment(ctx, bench.DeploymentConfig{Dir: t.TempDir(), Shards: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer dep.Stop(ctx)
	lk, err := bench.NewLatchkey(dep.URL, "", dep.Durability, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer lk.Close()
	runAll(t, ctx, lk)

	f, err := bench.NewFloors(ctx, dep.URL, dep.ServiceConn, smokeSpec, 2, dep.Replicas)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Preload(ctx); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{bench.FEcho, bench.FRelay, bench.FForward, bench.FPut, bench.FLeaderGet, bench.FCAS, bench.FCreateDelete} {
		t.Run(name, func(t *testing.T) {
			w, err := f.Workload(name)
			if err != nil {
				t.Fatal(err)
			}
			r, err := bench.Run(ctx, w, bench.RunConfig{Clients: 4, Duration: smokeRun})
			if err != nil {
				t.Fatal(err)
			}
			r.System = "nats"
			checkResult(t, r)
		})
	}
}

func TestSmokeEtcd(t *testing.T) {
	ctx := context.Background()
	e, err := bench.StartEtcd(ctx, t.TempDir(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	runAll(t, ctx, e)
}

func TestSmokeRedis(t *testing.T) {
	if _, err := bench.FindRedis(); err != nil {
		t.Skip(err)
	}
	ctx := context.Background()
	r, err := bench.StartRedis(ctx, t.TempDir(), bench.RedisEverySec, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	runAll(t, ctx, r)
}

func TestSmokeExecuteReport(t *testing.T) {
	rep, err := bench.Execute(context.Background(), bench.Plan{
		Workloads: []string{bench.WGet, bench.WPut},
		Clients:   []int{1, 4},
		Duration:  smokeRun,
		Spec:      smokeSpec,
		Shards:    1,
		Floors:    true,
		Dir:       t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	// floor + latchkey, for two workloads, at two concurrencies.
	if len(rep.Results) != 8 {
		t.Fatalf("got %d results, want 8", len(rep.Results))
	}
	for _, r := range rep.Results {
		checkResult(t, r)
		if r.System == "latchkey" && (r.Floor == "" || r.Ratio <= 0) {
			t.Errorf("%s c=%d has no ratio to its floor", r.Workload, r.Clients)
		}
	}
	for _, write := range []func(*os.File) error{
		func(f *os.File) error { return rep.WriteJSON(f) },
		func(f *os.File) error { return rep.WriteCSV(f) },
		func(f *os.File) error { return rep.WriteSVG(f) },
	} {
		f, err := os.CreateTemp(t.TempDir(), "out")
		if err != nil {
			t.Fatal(err)
		}
		if err := write(f); err != nil {
			t.Error(err)
		}
		if st, _ := f.Stat(); st.Size() == 0 {
			t.Error("empty output")
		}
		f.Close()
	}
	rep.WriteTable(os.Stderr)
}

func TestSmokeMeasureStorage(t *testing.T) {
	fig, err := bench.MeasureStorage(context.Background(), t.TempDir(), 2000, 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	if fig.RawBytes != 2000*(14+100) || fig.StartToServe <= 0 {
		t.Errorf("figures %+v: want raw bytes of 2000 keys and a start time", fig)
	}
}

// TestSmokeCluster is `latchkey bench put lock --cluster 3 --sync always
// --peers`, tiny: a 3-node cluster with R3 buckets and floors, and a
// 3-member etcd, every latchkey figure with its ratio to its floor and to
// etcd at equal durability and topology.
func TestSmokeCluster(t *testing.T) {
	rep, err := bench.Execute(context.Background(), bench.Plan{
		Workloads: []string{bench.WPut, bench.WLock},
		Clients:   []int{4},
		Duration:  smokeRun,
		Spec:      smokeSpec,
		Conns:     3,
		Shards:    1,
		Nodes:     3,
		Sync:      []string{"always"},
		Floors:    true,
		Peers:     true,
		Dir:       t.TempDir(),
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]int{}
	for _, r := range rep.Results {
		if r.System == "redis" {
			continue // installed or not, Redis is not what this test is about
		}
		checkResult(t, r)
		seen[r.System]++
		switch r.System {
		case "latchkey", "nats":
			if r.Durability != bench.DurabilityJSClusterAlways {
				t.Errorf("%s %s: durability %q, want %q", r.System, r.Workload, r.Durability, bench.DurabilityJSClusterAlways)
			}
		case "etcd":
			if r.Durability != bench.DurabilityEtcdCluster {
				t.Errorf("etcd %s: durability %q, want %q", r.Workload, r.Durability, bench.DurabilityEtcdCluster)
			}
		}
		if r.System == "latchkey" && (r.Floor == "" || r.Ratio <= 0 || r.EtcdRatio <= 0) {
			t.Errorf("latchkey %s: floor %q ratio %.2f etcd ratio %.2f; want both ratios", r.Workload, r.Floor, r.Ratio, r.EtcdRatio)
		}
	}
	if seen["latchkey"] != 2 || seen["nats"] != 2 || seen["etcd"] != 2 {
		t.Errorf("results per system %v; want 2 each of latchkey, nats, etcd", seen)
	}
	if n := len(rep.EtcdCheck()); n != 2 {
		t.Errorf("%d equal-durability lines; want 2", n)
	}
	var out strings.Builder
	rep.WriteTable(&out)
	if !strings.Contains(out.String(), bench.EtcdRatioLabel) {
		t.Errorf("table lacks the %q column:\n%s", bench.EtcdRatioLabel, out.String())
	}
	t.Log("\n" + out.String())
}

// TestExecuteRejectsBadClusters: only 1 or 3 servers, and a cluster only
// in process.
func TestExecuteRejectsBadClusters(t *testing.T) {
	for _, p := range []bench.Plan{
		{Workloads: []string{bench.WPut}, Nodes: 2, Dir: t.TempDir()},
		{Workloads: []string{bench.WPut}, Nodes: 4, Dir: t.TempDir()},
		{Workloads: []string{bench.WPut}, Nodes: 3, Server: "nats://127.0.0.1:1", Dir: t.TempDir()},
	} {
		if _, err := bench.Execute(context.Background(), p); err == nil {
			t.Errorf("nodes %d server %q: no error", p.Nodes, p.Server)
		}
	}
}
