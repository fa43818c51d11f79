// Package bench is the workload engine behind `latchkey bench`: it runs
// named workloads (reads, writes, compare-and-set, mixes, scans, locks)
// at a fixed client concurrency against latchkey, against the raw NATS and
// JetStream paths latchkey is built on (the floors), and against etcd and
// Redis (the peers), and reports throughput and latency percentiles.
//
// A figure means little alone: every latchkey figure is printed with its
// ratio to the floor measured in the same run on the same NATS server, so
// the ratio shows what latchkey's own code costs, whatever the machine.
package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Op is one operation of one client. It returns a non-nil error when the
// operation failed; a failed operation is counted, not timed.
type Op func(ctx context.Context) error

// Workload is a named load pattern bound to one system.
type Workload struct {
	Name string
	// NewClient returns the operation loop body of client id (0-based).
	// Per-client state (a key of its own, a session) lives in the closure.
	NewClient func(ctx context.Context, id int, rng *rand.Rand) (Op, error)
	// Timer, if set, replaces the per-op latencies in the result, for
	// workloads whose interesting latency is not one op's (lock handoff).
	Timer *SharedHistogram
	// Done, if set, runs after the clients stopped (close sessions).
	Done func()
}

// SharedHistogram is a Histogram behind a mutex, for latencies that one
// client observes of another's op.
type SharedHistogram struct {
	mu sync.Mutex
	h  Histogram
}

// Record adds one latency.
func (s *SharedHistogram) Record(d time.Duration) {
	s.mu.Lock()
	s.h.Record(d)
	s.mu.Unlock()
}

func (s *SharedHistogram) snapshot() Histogram {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.h
}

// Result is what one run of one workload on one system produced.
type Result struct {
	System     string        `json:"system"`
	Durability string        `json:"durability"`
	Workload   string        `json:"workload"`
	Clients    int           `json:"clients"`
	ValueSize  int           `json:"value_size"`
	Keys       int           `json:"keys"`
	Dist       string        `json:"dist"`
	Ops        uint64        `json:"ops"`
	Errors     uint64        `json:"errors"`
	FirstError string        `json:"first_error,omitempty"`
	Elapsed    time.Duration `json:"elapsed_ns"`
	OpsPerSec  float64       `json:"ops_per_sec"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	P999       time.Duration `json:"p999_ns"`
	Mean       time.Duration `json:"mean_ns"`
	Max        time.Duration `json:"max_ns"`
	// CPUPerOp is this process's CPU time (user+system) per op: clients,
	// services and the embedded NATS server together (not redis-server,
	// which is a child process). Unlike ops/s it barely moves when other
	// processes compete for the CPUs, so its ratios travel best.
	CPUPerOp time.Duration `json:"cpu_per_op_ns"`
	// Cores is the CPU this process used during the run, in cores.
	Cores float64 `json:"cores"`
	// Floor and Ratio compare with the floor measured in the same run
	// (ops/s over floor ops/s); empty when the workload has no floor.
	Floor string  `json:"floor,omitempty"`
	Ratio float64 `json:"ratio,omitempty"`
	// CPURatio is the floor's CPU per op over this CPU per op: like Ratio,
	// the share of the floor's efficiency reached, but measured in CPU
	// time, so other load on the machine moves it much less.
	CPURatio float64 `json:"cpu_ratio,omitempty"`
	// EtcdRatio compares with etcd at equal durability and topology (R3
	// with sync_interval always on a 3-node cluster against a 3-member
	// etcd, same workload and clients): ops/s over etcd's ops/s, and for
	// handoff etcd's p50 over this p50, so above 1 is latchkey ahead. 0
	// when the report has no such pairing.
	EtcdRatio float64 `json:"etcd_ratio,omitempty"`
	// Runs is how many runs the figures are the median of.
	Runs int `json:"runs"`
}

// RunConfig is how long and how wide one run is.
type RunConfig struct {
	Clients  int
	Duration time.Duration
	// Progress, if not nil, gets a line per second while the run lasts.
	Progress io.Writer
	// Label prefixes progress lines.
	Label string
	Seed  int64
}

// Run drives w with cfg.Clients concurrent clients for cfg.Duration. Each
// client issues its next op as soon as the previous one returns (closed
// loop). Ops still in flight at the deadline finish and count. ctx ends
// the run early (Ctrl-C).
func Run(ctx context.Context, w Workload, cfg RunConfig) (Result, error) {
	if cfg.Clients < 1 {
		cfg.Clients = 1
	}
	ops := make([]Op, cfg.Clients)
	for i := range ops {
		op, err := w.NewClient(ctx, i, rand.New(rand.NewSource(cfg.Seed+int64(i)*7919)))
		if err != nil {
			if w.Done != nil {
				w.Done()
			}
			return Result{}, fmt.Errorf("%s: client %d: %w", w.Name, i, err)
		}
		ops[i] = op
	}
	var (
		stop     atomic.Bool
		count    atomic.Uint64
		errs     atomic.Uint64
		firstErr atomic.Value
		wg       sync.WaitGroup
	)
	hists := make([]*Histogram, cfg.Clients)
	cpu0 := processCPU()
	start := time.Now()
	for i := range ops {
		hists[i] = new(Histogram)
		wg.Add(1)
		go func(op Op, h *Histogram) {
			defer wg.Done()
			for !stop.Load() && ctx.Err() == nil {
				t0 := time.Now()
				err := op(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					errs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					continue
				}
				h.Record(time.Since(t0))
				count.Add(1)
			}
		}(ops[i], hists[i])
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.NewTimer(cfg.Duration)
	defer deadline.Stop()
	last, lastT := uint64(0), start
	waiting := true
	for waiting {
		select {
		case <-deadline.C:
			waiting = false
		case <-ctx.Done():
			waiting = false
		case now := <-tick.C:
			if cfg.Progress != nil {
				n := count.Load()
				fmt.Fprintf(cfg.Progress, "  %-40s %5.1fs %9.0f ops/s  errors %d\n", cfg.Label,
					now.Sub(start).Seconds(), float64(n-last)/now.Sub(lastT).Seconds(), errs.Load())
				last, lastT = n, now
			}
		}
	}
	stop.Store(true)
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		return Result{}, fmt.Errorf("%s: clients did not stop within 30s of the deadline", w.Name)
	}
	elapsed := time.Since(start)
	cpu := processCPU() - cpu0
	if w.Done != nil {
		w.Done()
	}
	var h Histogram
	for _, x := range hists {
		h.Merge(x)
	}
	if w.Timer != nil {
		h = w.Timer.snapshot()
	}
	r := Result{
		Workload:  w.Name,
		Clients:   cfg.Clients,
		Ops:       h.Count(),
		Errors:    errs.Load(),
		Elapsed:   elapsed,
		OpsPerSec: float64(h.Count()) / elapsed.Seconds(),
		P50:       h.Quantile(0.5),
		P99:       h.Quantile(0.99),
		P999:      h.Quantile(0.999),
		Mean:      h.Mean(),
		Max:       h.Max(),
		Cores:     cpu.Seconds() / elapsed.Seconds(),
		Runs:      1,
	}
	if h.Count() > 0 {
		r.CPUPerOp = cpu / time.Duration(h.Count())
	}
	if s, ok := firstErr.Load().(string); ok {
		r.FirstError = s
	}
	return r, ctx.Err()
}

// processCPU is the user plus system CPU time this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
