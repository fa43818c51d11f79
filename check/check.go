// Package check tests a latchkey deployment the way Jepsen and etcd's
// robustness suite test theirs: it drives concurrent traffic (gets of both
// consistencies, puts, compare-and-set puts, deletes, scans, lock sessions
// with fenced writes, puts with a TTL), records every operation with its
// invocation and completion time and outcome, optionally injects faults on
// a seeded schedule, and then checks the history:
//
//   - linearizability of the key-value operations with porcupine
//     (check/kvmodel; a write with an unknown outcome may have happened);
//   - stale gets against their weaker promise (see checkStale);
//   - scans as per-key linearizable reads plus their page rules;
//   - lock safety: no two holders with overlapping validity, tokens
//     strictly increasing per name, no stale fenced write accepted;
//   - durability: the final state keeps every acknowledged write;
//   - TTL keys: not gone before their TTL, gone some seconds after;
//   - with Config.Watch, the change feed: per key in revision order, and
//     covering every acknowledged change.
//
// docs/CORRECTNESS.md explains each check and what it assumes.
package check

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/latchkey/latchkey/client"
)

// ErrViolations is returned (wrapped) by Run when a check failed.
var ErrViolations = errors.New("consistency violations found")

// Config configures a run.
type Config struct {
	Duration time.Duration // how long traffic runs; default 30s
	Clients  int           // concurrent clients of the random workload; default 8 (-1: none)
	Keys     int           // key space size; default 16
	Locks    int           // lock names; key i is fenced by lock i%Locks; default 4
	Seed     uint64        // workload and fault schedule seed
	// Namespace prefixes every key and lock name, so a run against a live
	// deployment touches nothing else. Default "latchkey-check/<seed>/".
	Namespace string
	// OpTimeout bounds one request; past it the outcome is unknown.
	// Default 2s.
	OpTimeout time.Duration
	// StaleBound is how far behind a stale get may be (see checkStale).
	// Default 15s.
	StaleBound time.Duration
	// LeaseTTL is the lease of the workload's lock sessions. Default 2s.
	LeaseTTL time.Duration
	// CheckTimeout bounds porcupine; past it the result is inconclusive.
	// Default 2m.
	CheckTimeout time.Duration
	// Connect returns the client of worker i (called once per worker, and
	// for the paused holder and the final reads).
	Connect func(ctx context.Context, i int) (*client.Client, error)
	// Injector, if set, causes the faults of the schedule.
	Injector Injector
	// Schedule, if set, replaces the seeded schedule: these faults at
	// these times (to replay a run's faults exactly, or to aim at one
	// sequence).
	Schedule *Schedule
	// PauseHolder adds paused-lock-holder faults to the schedule.
	PauseHolder bool
	// Edges selects the workloads aimed at TTL instants and fence bounds
	// (edges.go); the zero value runs none of them.
	Edges Edges
	// Progress receives the schedule and one line per second; nil = none.
	Progress io.Writer
	// OutDir is where porcupine's visualisation goes on a violation;
	// default os.TempDir().
	OutDir string
	// HistoryFile, if set, receives every recorded operation as one JSON
	// object a line once traffic ends, to study a violation.
	HistoryFile string
	// Watch follows the namespace with one client.Watch from before the
	// traffic until after the final reads, and checks its events (the
	// "watch" check, watch.go). It uses a client of its own.
	Watch bool
	// Unsafe plants a bug in the checker's own harness, for the
	// self-test of faults the services' Unsafe switches cannot reach.
	Unsafe Unsafe
}

// Unsafe holds the harness plants. Only self-tests set them.
type Unsafe struct {
	// Get, if set, answers the linearizable gets of the workload's
	// client 0 in place of the service: e.g. a raw leader read
	// ($JS.API.STREAM.MSG.GET) from a node cut off from its quorum, the
	// stale read the services' quorum confirmation prevents.
	Get func(ctx context.Context, key string) (value string, rev uint64, found bool, err error)
}

func (c *Config) defaults() {
	if c.Duration <= 0 {
		c.Duration = 30 * time.Second
	}
	if c.Clients == 0 {
		c.Clients = 8
	}
	// A run of edge workloads alone (Clients -1) has no random workers.
	c.Clients = max(c.Clients, 0)
	if c.Keys <= 0 {
		c.Keys = 16
	}
	if c.Locks <= 0 {
		c.Locks = 4
	}
	c.Locks = min(c.Locks, c.Keys)
	if c.Namespace == "" {
		c.Namespace = fmt.Sprintf("latchkey-check/%d/", c.Seed)
	}
	if c.OpTimeout <= 0 {
		c.OpTimeout = 2 * time.Second
	}
	if c.StaleBound <= 0 {
		c.StaleBound = 15 * time.Second
	}
	if c.LeaseTTL < time.Second {
		c.LeaseTTL = 2 * time.Second
	}
	if c.CheckTimeout <= 0 {
		c.CheckTimeout = 2 * time.Minute
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	c.Edges.defaults()
}

// run is the state of one Run.
type run struct {
	cfg  Config
	rec  *recorder
	keys []string
	lks  []string

	total, ok, unknown atomic.Int64
	edgeMu             sync.Mutex
	edgeTally          map[string]int // what the edge workloads saw, for the report
	faultMu            sync.Mutex
	current            string // the fault in effect, for progress lines
	faults             []FaultRecord
	// With Config.Watch: what the watch delivered, and the error of a
	// watch that ended by itself.
	watchEvents []WatchEvent
	watchErr    error
}

// FaultRecord is a fault as it happened.
type FaultRecord struct {
	Fault            Fault
	Injected, Healed time.Duration
	Err              error
	Note             string
}

func (r *run) key(i int) string  { return fmt.Sprintf("%sk%02d", r.cfg.Namespace, i) }
func (r *run) lock(j int) string { return fmt.Sprintf("%sl%d", r.cfg.Namespace, j) }

// keysOf returns the keys fenced by lock j.
func (r *run) keysOf(j int) []string {
	var out []string
	for i := j; i < len(r.keys); i += r.cfg.Locks {
		out = append(out, r.keys[i])
	}
	return out
}

// Run drives the workload, injects the schedule's faults, and checks the
// history. It returns the report, and an error wrapping ErrViolations if
// any check failed (other errors: the run itself could not be done).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.defaults()
	if cfg.Connect == nil {
		return nil, errors.New("check: Config.Connect is required")
	}
	r := &run{cfg: cfg, rec: newRecorder()}
	for i := range cfg.Keys {
		r.keys = append(r.keys, r.key(i))
	}
	for j := range cfg.Locks {
		r.lks = append(r.lks, r.lock(j))
	}
	var faults []Fault
	if cfg.Injector != nil {
		faults = append(faults, cfg.Injector.Faults()...)
	}
	if cfg.PauseHolder {
		faults = append(faults, Fault{Kind: KindPauseHolder})
	}
	sched := NewSchedule(cfg.Seed, cfg.Duration, faults)
	if cfg.Schedule != nil {
		sched = *cfg.Schedule
	}
	fmt.Fprintf(cfg.Progress, "latchkey check: %d clients, %d keys, %d locks, %s, seed %d, namespace %q\n",
		cfg.Clients, cfg.Keys, cfg.Locks, cfg.Duration, cfg.Seed, cfg.Namespace)
	fmt.Fprint(cfg.Progress, sched)

	clients := make([]*client.Client, cfg.Clients+3+edgeClients)
	for i := range clients {
		c, err := cfg.Connect(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("connecting client %d: %w", i, err)
		}
		clients[i] = c
	}
	r.rec = newRecorder()
	var wr *watchRec
	if cfg.Watch {
		// A client of its own, at the index after all the others, so that
		// the workload's clients stay exactly as in a run without Watch.
		c, err := cfg.Connect(ctx, len(clients))
		if err != nil {
			return nil, fmt.Errorf("connecting the watch's client: %w", err)
		}
		// Started before any traffic, so every write of the run is after it.
		if wr, err = r.startWatch(ctx, c); err != nil {
			return nil, err
		}
	}
	wctx, stop := context.WithTimeout(ctx, cfg.Duration)
	defer stop()
	var wg sync.WaitGroup
	for i := range cfg.Clients {
		wg.Go(func() { r.worker(wctx, i, clients[i]) })
	}
	wg.Go(func() { r.ttlWorker(wctx, clients[cfg.Clients+2]) })
	r.startEdges(wctx, &wg, clients[cfg.Clients+3:])
	faultsDone := make(chan struct{})
	go func() {
		defer close(faultsDone)
		r.runSchedule(wctx, sched, clients[cfg.Clients], clients[cfg.Clients+1])
	}()
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		r.progress(wctx)
	}()
	wg.Wait()
	<-faultsDone
	<-progressDone
	trafficEnd := r.rec.now()
	if ctx.Err() != nil {
		// Interrupted: check what was recorded; the final reads get a
		// context of their own.
		fmt.Fprintf(cfg.Progress, "interrupted: checking the %d operations recorded so far\n", r.rec.count())
		ctx = context.WithoutCancel(ctx)
	}
	fmt.Fprintf(cfg.Progress, "traffic done after %.1fs: %d operations; reading every key for the durability check\n",
		trafficEnd.Seconds(), r.rec.count())
	if err := r.finalReads(ctx, clients[cfg.Clients+2]); err != nil {
		if wr != nil {
			wr.w.Stop()
		}
		return nil, err
	}
	if wr != nil {
		// After the final reads, so that the drain also waits for the
		// expiry events of TTL keys they found absent.
		r.watchEvents, r.watchErr = r.stopWatch(wr)
	}
	if cfg.HistoryFile != "" {
		if err := writeHistory(cfg.HistoryFile, r.rec.snapshot()); err != nil {
			fmt.Fprintf(cfg.Progress, "writing the history: %v\n", err)
		} else {
			fmt.Fprintf(cfg.Progress, "history written to %s\n", cfg.HistoryFile)
		}
	}
	fmt.Fprintf(cfg.Progress, "checking the history\n")
	rep := r.verify(trafficEnd, sched)
	rep.Edges = r.edgeLines()
	if len(rep.Violations) > 0 {
		return rep, fmt.Errorf("%w: %d", ErrViolations, len(rep.Violations))
	}
	return rep, nil
}

// progress prints one line per second while traffic runs.
func (r *run) progress(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var last int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		total, ok, unknown := r.total.Load(), r.ok.Load(), r.unknown.Load()
		r.faultMu.Lock()
		fault := r.current
		r.faultMu.Unlock()
		if fault == "" {
			fault = "none"
		}
		rate := 100.0
		if total > 0 {
			rate = 100 * float64(ok) / float64(total)
		}
		fmt.Fprintf(r.cfg.Progress, "%6.0fs  %7d ops  %5d/s  ok %5.1f%%  unknown %4d  fault: %s\n",
			r.rec.now().Seconds(), total, total-last, rate, unknown, fault)
		last = total
	}
}

// record adds op to the history and the progress counters.
func (r *run) record(op Op) {
	r.rec.add(op)
	r.total.Add(1)
	switch op.Outcome {
	case OK:
		r.ok.Add(1)
	case Unknown:
		r.unknown.Add(1)
	}
}

// classify maps a client error to an outcome. 409 and 400-class answers
// are definite refusals that changed nothing (among them the edge rules:
// 409 renew_too_late, fenced_key_ttl, too_many_fences, 400 unknown_token,
// fence_with_ttl); everything else (timeouts, 503, 500, transport errors)
// leaves the effect unknown.
func classify(err error) Outcome {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, client.ErrConflict), errors.Is(err, client.ErrInvalid), errors.Is(err, client.ErrTooLarge):
		return Failed
	}
	return Unknown
}

// invalid says whether the service refused a request as malformed (400,
// 413): the checker's own mistake, not a precondition that failed.
func invalid(err error) bool {
	return errors.Is(err, client.ErrInvalid) || errors.Is(err, client.ErrTooLarge)
}

func reason(err error) string {
	if err == nil {
		return ""
	}
	if rs := client.Reason(err); rs != "" {
		return rs
	}
	return err.Error()
}

// worker is one client's loop of random operations.
func (r *run) worker(ctx context.Context, id int, c *client.Client) {
	rng := rand.New(rand.NewPCG(r.cfg.Seed, uint64(id)+1))
	lastRev := map[string]uint64{}
	n := 0
	value := func() string { n++; return fmt.Sprintf("c%d-%d", id, n) }
	for ctx.Err() == nil {
		ki := rng.IntN(len(r.keys))
		key := r.keys[ki]
		switch p := rng.IntN(100); {
		case p < 25:
			if op := r.get(c, id, key, KindGet); op.Outcome == OK {
				lastRev[key] = op.Rev
			}
		case p < 35:
			r.get(c, id, key, KindStaleGet)
		case p < 53:
			r.put(ctx, c, id, key, value(), nil, 0, "")
		case p < 68:
			expected := lastRev[key]
			r.put(ctx, c, id, key, value(), &expected, 0, "")
		case p < 75:
			r.del(ctx, c, id, key, 0, "")
		case p < 82:
			r.scan(ctx, c, id, rng)
		default:
			r.lockSession(ctx, c, id, rng.IntN(len(r.lks)), rng, value)
		}
	}
}

// opCtx bounds one request. It is not derived from the run's context so
// that an operation in flight when the run ends gets its answer.
func (r *run) opCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.cfg.OpTimeout)
}

// get reads key: kind is KindGet, KindStaleGet or KindFinalGet.
func (r *run) get(c *client.Client, id int, key string, kind Kind) Op {
	op := Op{Client: id, Kind: kind, Key: key}
	var opts []client.GetOption
	if kind == KindStaleGet {
		opts = append(opts, client.Stale())
	}
	ctx, cancel := r.opCtx()
	defer cancel()
	if kind == KindGet && id == 0 && r.cfg.Unsafe.Get != nil {
		op.Call = r.rec.now()
		v, rev, found, err := r.cfg.Unsafe.Get(ctx, key)
		op.Return = r.rec.now()
		op.Found, op.Result, op.Rev = found, v, rev
		if err != nil {
			op.Outcome, op.Reason = Unknown, err.Error()
		}
		r.record(op)
		return op
	}
	op.Call = r.rec.now()
	e, err := c.Get(ctx, key, opts...)
	op.Return = r.rec.now()
	switch {
	case err == nil:
		op.Found, op.Result, op.Rev = true, string(e.Value), e.Revision
	case errors.Is(err, client.ErrNotFound):
	default:
		op.Outcome, op.Reason = Unknown, reason(err)
	}
	r.record(op)
	return op
}

func (r *run) put(_ context.Context, c *client.Client, id int, key, value string, expected *uint64, token uint64, lock string) Op {
	return r.putTTL(c, id, key, value, expected, token, lock, 0, "")
}

// putTTL is put with ttl_ms (0 = none), recorded with probe as its Probe.
func (r *run) putTTL(c *client.Client, id int, key, value string, expected *uint64, token uint64, lock string, ttl time.Duration, probe string) Op {
	op := Op{Client: id, Kind: KindPut, Key: key, Value: value, Token: token, Lock: lock, TTL: ttl, Probe: probe}
	var opts []client.WriteOption
	if ttl > 0 {
		opts = append(opts, client.WithTTL(ttl))
	}
	if expected != nil {
		op.Kind, op.Expected = KindCAS, *expected
		opts = append(opts, client.IfRevision(*expected))
	}
	if token != 0 {
		opts = append(opts, client.WithFence(lock, token))
	}
	ctx, cancel := r.opCtx()
	defer cancel()
	op.Call = r.rec.now()
	rev, err := c.Put(ctx, key, []byte(value), opts...)
	op.Return = r.rec.now()
	op.Rev, op.Outcome, op.Reason, op.Invalid = rev, classify(err), reason(err), invalid(err)
	r.record(op)
	return op
}

func (r *run) del(_ context.Context, c *client.Client, id int, key string, token uint64, lock string) Op {
	op := Op{Client: id, Kind: KindDel, Key: key, Token: token, Lock: lock}
	var opts []client.WriteOption
	if token != 0 {
		opts = append(opts, client.WithFence(lock, token))
	}
	ctx, cancel := r.opCtx()
	defer cancel()
	op.Call = r.rec.now()
	deleted, rev, err := c.Delete(ctx, key, opts...)
	op.Return = r.rec.now()
	op.Found, op.Rev, op.Outcome, op.Reason, op.Invalid = deleted, rev, classify(err), reason(err), invalid(err)
	r.record(op)
	return op
}

func (r *run) scan(_ context.Context, c *client.Client, id int, rng *rand.Rand) {
	// Every workload key starts with "k"; TTL keys ("t...") stay out of
	// scans, whose items are checked against the main keys' writes.
	op := Op{Client: id, Kind: KindScan, Prefix: r.cfg.Namespace + "k", Limit: 1 + rng.IntN(len(r.keys)/2+1)}
	if rng.IntN(2) == 0 {
		// Narrow the prefix to the keys k<d>*.
		op.Prefix += fmt.Sprint(rng.IntN(min(len(r.keys)/10+1, 10)))
	}
	if rng.IntN(3) == 0 {
		op.After = r.keys[rng.IntN(len(r.keys))]
	}
	ctx, cancel := r.opCtx()
	defer cancel()
	opts := []client.ScanOption{client.Limit(op.Limit)}
	if op.After != "" {
		opts = append(opts, client.After(op.After))
	}
	op.Call = r.rec.now()
	page, err := c.Scan(ctx, op.Prefix, opts...)
	op.Return = r.rec.now()
	op.Outcome, op.Reason = classify(err), reason(err)
	if err == nil {
		op.More = page.More
		for _, e := range page.Items {
			op.Items = append(op.Items, Item{Key: e.Key, Value: string(e.Value), Rev: e.Revision})
		}
	}
	r.record(op)
}

// acquire takes the named lock for a lease of ttl, waiting up to wait.
func (r *run) acquire(c *client.Client, id int, name string, ttl, wait time.Duration) Op {
	op := Op{Client: id, Kind: KindAcquire, Key: name}
	ctx, cancel := context.WithTimeout(context.Background(), wait+r.cfg.OpTimeout)
	defer cancel()
	op.Call = r.rec.now()
	l, err := c.Acquire(ctx, name, client.WithOwner(fmt.Sprintf("check-%d", id)),
		client.WithLeaseTTL(ttl), client.WithWait(wait), client.WithoutKeepAlive())
	op.Return = r.rec.now()
	op.Outcome, op.Reason = classify(err), reason(err)
	if err == nil {
		op.Token = l.Token()
		// The lease asked for, counted from the invocation: the grant came
		// no earlier, and a lease never ends early. Deliberately not the
		// client library's estimate nor the server's answer, so that a
		// bug in either cannot widen what the check credits.
		op.TTL = ttl
		op.ValidUntil = op.Call + ttl
	}
	r.record(op)
	return op
}

// renew renews the lease of token for lease (the length it was acquired
// with); like acquire, it credits the holder with lease from the
// invocation.
func (r *run) renew(c *client.Client, id int, name string, token uint64, lease time.Duration) Op {
	op := Op{Client: id, Kind: KindRenew, Key: name, Token: token}
	ctx, cancel := r.opCtx()
	defer cancel()
	op.Call = r.rec.now()
	granted, err := c.Renew(ctx, name, token, lease)
	op.Return = r.rec.now()
	op.TTL, op.Granted, op.Outcome, op.Reason = lease, granted, classify(err), reason(err)
	// An acknowledged renewal holds for the lease it granted, counted from
	// when it was sent (the API's promise, even for a renewal that arrived
	// as the old lease ran out); the lease asked for if the answer named
	// none.
	if granted <= 0 {
		granted = lease
	}
	op.ValidUntil = op.Call + granted
	r.record(op)
	return op
}

func (r *run) release(c *client.Client, id int, name string, token uint64) Op {
	op := Op{Client: id, Kind: KindRelease, Key: name, Token: token}
	ctx, cancel := r.opCtx()
	defer cancel()
	op.Call = r.rec.now()
	err := c.ReleaseLock(ctx, name, token)
	op.Return = r.rec.now()
	op.Outcome, op.Reason = classify(err), reason(err)
	r.record(op)
	return op
}
