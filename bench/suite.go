package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/latchkey/latchkey/client"
)

// Plan is one `latchkey bench` invocation.
type Plan struct {
	Workloads []string // latchkey workloads; floors follow from FloorOf
	Clients   []int    // concurrency levels, each a separate run
	Duration  time.Duration
	Runs      int // figures are the median (by ops/s) of this many runs
	Spec      Spec
	Conns     int // NATS connections (or etcd clients) the clients share

	// Target: "" starts an in-process deployment per sync mode; otherwise
	// the NATS URL of a running deployment.
	Server string
	Prefix string
	Shards int
	// Nodes is the in-process deployment's NATS servers: 1 (default) or 3
	// (a cluster with R3 buckets and floors; --peers then runs a 3-member
	// etcd).
	Nodes int
	// Sync lists the JetStream sync modes to run: "default", "always".
	Sync []string
	// Floors measures the raw NATS/JetStream paths.
	Floors bool
	// Peers runs etcd and Redis too (Redis only when installed).
	Peers bool

	Dir      string    // scratch directory; "" = a new temporary one
	Progress io.Writer // nil = quiet
	Seed     int64
}

// Report is every result of a plan plus what was skipped and why.
type Report struct {
	Results []Result `json:"results"`
	Notes   []string `json:"notes,omitempty"`
	Machine Machine  `json:"machine"`
	Plan    string   `json:"plan"`
}

func (p *Plan) logf(format string, args ...any) {
	if p.Progress != nil {
		fmt.Fprintf(p.Progress, format+"\n", args...)
	}
}

// Execute runs the plan.
func Execute(ctx context.Context, p Plan) (*Report, error) {
	if p.Runs < 1 {
		p.Runs = 1
	}
	if len(p.Clients) == 0 {
		p.Clients = []int{64}
	}
	if len(p.Sync) == 0 {
		p.Sync = []string{"default"}
	}
	if p.Conns < 1 {
		p.Conns = 4
	}
	if p.Shards < 1 {
		p.Shards = 3
	}
	if p.Nodes < 1 {
		p.Nodes = 1
	}
	if p.Nodes != 1 && p.Nodes != 3 {
		return nil, fmt.Errorf("bench: %d nodes: want 1 or 3", p.Nodes)
	}
	if p.Nodes > 1 && p.Server != "" {
		return nil, errors.New("bench: a cluster is for the in-process deployment; an external server is its own")
	}
	if p.Dir == "" {
		dir, err := os.MkdirTemp("", "latchkey-bench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		p.Dir = dir
	}
	rep := &Report{Machine: ThisMachine()}
	// Partial results of a failed or interrupted plan still get ratios.
	defer func() { attachRatios(rep.Results) }()
	for _, mode := range p.Sync {
		if err := p.runLatchkey(ctx, mode, rep); err != nil {
			return rep, err
		}
	}
	if p.Peers {
		if p.Nodes > 1 {
			rep.note("redis: one process without replication on any topology, so not an equal-durability peer of a cluster")
		}
		if err := p.runPeers(ctx, rep); err != nil {
			return rep, err
		}
	}
	return rep, nil
}

// runLatchkey runs the floors and latchkey workloads on one deployment.
func (p *Plan) runLatchkey(ctx context.Context, mode string, rep *Report) error {
	url, durability := p.Server, DurabilityExternal
	var dep *Deployment
	if p.Server == "" {
		if p.Nodes > 1 {
			p.logf("starting an in-process deployment on a %d-node NATS cluster (R3): %d shard(s), JetStream sync %s", p.Nodes, p.Shards, mode)
		} else {
			p.logf("starting an in-process deployment: %d shard(s), JetStream sync %s", p.Shards, mode)
		}
		var err error
		dep, err = StartDeployment(ctx, DeploymentConfig{Dir: filepath.Join(p.Dir, "nats-"+mode), Shards: p.Shards, SyncAlways: mode == "always", Prefix: p.Prefix, Nodes: p.Nodes})
		if err != nil {
			return err
		}
		defer dep.Stop(context.Background())
		url, durability = dep.URL, dep.Durability
	} else if mode == "default" {
		rep.note("--server: cpu/op counts only this process (clients and the floors' echo and relay), not the services and NATS server elsewhere, so cpu ratios do not apply")
	} else {
		rep.note("--sync always needs the in-process deployment: an external server keeps its own sync setting")
		return nil
	}
	lk, err := NewLatchkey(url, p.Prefix, durability, p.Conns)
	if err != nil {
		return err
	}
	defer lk.Close()
	var floors *Floors
	if p.Floors {
		svcConn, replicas := lk.conns[0], 1
		if dep != nil {
			svcConn, replicas = dep.ServiceConn, dep.Replicas
		}
		if floors, err = NewFloors(ctx, url, svcConn, p.Spec, p.Conns, replicas); err != nil {
			return fmt.Errorf("floors: %w", err)
		}
		defer floors.Close()
		if slices.Contains(p.Workloads, WGet) {
			p.logf("preloading %d keys into the floor bucket", p.Spec.Keys)
			if err := floors.Preload(ctx); err != nil {
				return err
			}
		}
	}
	if slices.ContainsFunc(p.Workloads, needsPreload) {
		t0 := time.Now()
		p.logf("preloading %d keys of %d bytes into latchkey", p.Spec.Keys, p.Spec.ValueSize)
		if dep != nil {
			// Straight into the shard streams, then one scan: its barrier
			// waits until every shard's view has applied the load.
			if err := BulkLoad(ctx, dep.ServiceConn, p.Prefix, p.Shards, p.Spec); err != nil {
				return err
			}
			sctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			_, err := lk.c().Scan(sctx, keyPrefix, client.Limit(1))
			cancel()
			if err != nil {
				return fmt.Errorf("waiting for the views to load: %w", err)
			}
		} else if err := Preload(ctx, lk, p.Spec, 128); err != nil {
			return err
		}
		p.logf("preloaded in %v", time.Since(t0).Round(time.Millisecond))
	}
	for _, w := range p.Workloads {
		f := FloorOf[w]
		for _, c := range p.Clients {
			if floors != nil && f != "" {
				for _, name := range append(ExtraFloors[w], f) {
					if err := p.measure(ctx, rep, func() (Workload, error) { return floors.Workload(name) }, "nats", durability, c); err != nil {
						return err
					}
				}
			}
			mk := func() (Workload, error) { return NewWorkload(w, lk, p.Spec) }
			if err := p.measure(ctx, rep, mk, lk.Name(), durability, c); err != nil {
				return err
			}
		}
	}
	return nil
}

// runPeers runs the same workloads on etcd and Redis.
func (p *Plan) runPeers(ctx context.Context, rep *Report) error {
	var e *Etcd
	var err error
	if p.Nodes > 1 {
		// Same topology as the cluster: etcd's members on loopback in
		// this process, as the NATS nodes are.
		p.logf("starting a %d-member embedded etcd", p.Nodes)
		e, err = StartEtcdCluster(ctx, filepath.Join(p.Dir, "etcd"), p.Nodes, p.Conns)
	} else {
		p.logf("starting embedded etcd")
		e, err = StartEtcd(ctx, filepath.Join(p.Dir, "etcd"), p.Conns)
	}
	if err != nil {
		return err
	}
	err = p.runSystem(ctx, rep, e)
	_ = e.Close()
	if err != nil {
		return err
	}
	if _, err := FindRedis(); err != nil {
		rep.note(RedisInstall)
		p.logf("%s", RedisInstall)
		return nil
	}
	for _, mode := range p.Sync {
		fsync := RedisEverySec
		if mode == "always" {
			fsync = RedisAlways
		}
		p.logf("starting redis-server (appendfsync %s)", fsync)
		r, err := StartRedis(ctx, filepath.Join(p.Dir, "redis-"+fsync), fsync, 1024)
		if err != nil {
			return err
		}
		err = p.runSystem(ctx, rep, r)
		_ = r.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) runSystem(ctx context.Context, rep *Report, s System) error {
	if slices.ContainsFunc(p.Workloads, needsPreload) {
		p.logf("preloading %d keys into %s", p.Spec.Keys, s.Name())
		if err := Preload(ctx, s, p.Spec, 128); err != nil {
			return err
		}
	}
	for _, w := range p.Workloads {
		if w == WScan && s.Name() == "redis" {
			rep.note("redis: no scan figures (Redis keeps no key order; SCAN is unordered)")
			continue
		}
		mk := func() (Workload, error) { return NewWorkload(w, s, p.Spec) }
		for _, c := range p.Clients {
			if err := p.measure(ctx, rep, mk, s.Name(), s.Durability(), c); err != nil {
				return err
			}
		}
	}
	return nil
}

// measure runs w p.Runs times and keeps the run with the median ops/s.
// mk builds a fresh workload per run: contended and handoff workloads
// keep state (the lock, the last release) that must not leak across runs.
func (p *Plan) measure(ctx context.Context, rep *Report, mk func() (Workload, error), system, durability string, clients int) error {
	var runs []Result
	for i := 0; i < p.Runs; i++ {
		w, err := mk()
		if err != nil {
			return err
		}
		label := fmt.Sprintf("%s %s c=%d run %d/%d", system, w.Name, clients, i+1, p.Runs)
		r, err := Run(ctx, w, RunConfig{Clients: clients, Duration: p.Duration, Progress: p.Progress, Label: label, Seed: p.Seed + int64(i)})
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return err
			}
			return fmt.Errorf("%s on %s: %w", w.Name, system, err)
		}
		r.System, r.Durability = system, durability
		r.ValueSize, r.Keys, r.Dist = p.Spec.ValueSize, p.Spec.Keys, p.Spec.Dist
		runs = append(runs, r)
		p.logf("  %-40s %9.0f ops/s  p50 %-9v p99 %-9v p999 %-9v errors %d", label, r.OpsPerSec, r.P50, r.P99, r.P999, r.Errors)
	}
	sort.Slice(runs, func(i, j int) bool { return runs[i].OpsPerSec < runs[j].OpsPerSec })
	m := runs[len(runs)/2]
	m.Runs = len(runs)
	for _, r := range runs {
		if m.FirstError == "" && r.FirstError != "" {
			m.FirstError = r.FirstError
		}
	}
	rep.Results = append(rep.Results, m)
	return nil
}

// attachRatios sets Floor and Ratio of every latchkey result whose floor
// was measured on the same server, at the same concurrency.
func attachRatios(rs []Result) {
	for i := range rs {
		r := &rs[i]
		f := FloorOf[r.Workload]
		if r.System != "latchkey" || f == "" {
			continue
		}
		for _, x := range rs {
			if x.System == "nats" && x.Workload == f && x.Clients == r.Clients && x.Durability == r.Durability && x.OpsPerSec > 0 {
				r.Floor, r.Ratio = f, r.OpsPerSec/x.OpsPerSec
				if r.CPUPerOp > 0 {
					r.CPURatio = float64(x.CPUPerOp) / float64(r.CPUPerOp)
				}
			}
		}
	}
	for i := range rs {
		r := &rs[i]
		peer, ok := EqualEtcd[r.Durability]
		if r.System != "latchkey" || !ok {
			continue
		}
		for _, e := range rs {
			if e.System != "etcd" || e.Durability != peer || e.Workload != r.Workload || e.Clients != r.Clients {
				continue
			}
			if r.Workload == WHandoff {
				if r.P50 > 0 {
					r.EtcdRatio = float64(e.P50) / float64(r.P50)
				}
			} else if e.OpsPerSec > 0 {
				r.EtcdRatio = r.OpsPerSec / e.OpsPerSec
			}
		}
	}
}

// EqualEtcd maps a latchkey durability to the etcd durability it is
// compared with as equals (issue 15): the same fsync before every ack on
// the same topology. An R1 server with sync always is not paired with a
// single etcd member, because JetStream fsyncs every R1 message alone
// while etcd group-commits; on R3 both group-commit (FIELD-NOTES).
var EqualEtcd = map[string]string{DurabilityJSClusterAlways: DurabilityEtcdCluster}

// note records a remark once.
func (r *Report) note(s string) {
	if !slices.Contains(r.Notes, s) {
		r.Notes = append(r.Notes, s)
	}
}
