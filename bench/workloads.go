package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// System is a store the workloads run against: latchkey, etcd or Redis.
// Each method is one logical operation as a user of that store would
// write it.
type System interface {
	// Name identifies the system in reports ("latchkey", "etcd", "redis").
	Name() string
	// Durability says what an acknowledged write survives, in a few words.
	Durability() string
	// Get reads key; stale allows an answer that may miss recent writes.
	// A missing key is not an error.
	Get(ctx context.Context, key string, stale bool) error
	// Put writes key unconditionally.
	Put(ctx context.Context, key string, value []byte) error
	// CAS writes key if its revision is still *rev and stores the new
	// revision in *rev; *rev == 0 means "absent". The key belongs to one
	// client, so a conflict is an error.
	CAS(ctx context.Context, key string, value []byte, rev *uint64) error
	// Scan reads one page of at most limit keys with prefix after after.
	// It returns the number of keys read.
	Scan(ctx context.Context, prefix, after string, limit int) (int, error)
	// Acquire takes lock name, waiting for it when wait is set, and
	// returns the function that releases it.
	Acquire(ctx context.Context, name string, wait bool) (release func(context.Context) error, err error)
	// Close frees what the system holds (connections, child processes).
	Close() error
}

// ErrUnsupported is returned by a System for a workload it cannot run.
var ErrUnsupported = errors.New("not supported by this system")

// Spec is the shape of the load shared by every workload of a run.
type Spec struct {
	Keys      int    // key space of reads, writes and mixes
	ValueSize int    // bytes per value
	Dist      string // "uniform" or "zipfian"
	ScanLimit int    // page size of scans
}

// Workload names, in report order.
const (
	WGet           = "get"
	WGetStale      = "get-stale"
	WPut           = "put"
	WCAS           = "cas"
	WMix90         = "mix90"
	WMix50         = "mix50"
	WScan          = "scan"
	WLock          = "lock"
	WLockContended = "lock-contended"
	WHandoff       = "handoff"
)

// AllWorkloads lists the workloads of a full run.
var AllWorkloads = []string{WGet, WGetStale, WPut, WCAS, WMix90, WMix50, WScan, WLock, WLockContended, WHandoff}

// keyName is the key of index i; zero-padded so scans walk them in order.
func keyName(i int) string { return fmt.Sprintf("bench/%08d", i) }

// keyPrefix is what every benchmark key starts with.
const keyPrefix = "bench/"

// chooser picks key indexes with the run's popularity distribution.
func chooser(spec Spec, rng *rand.Rand) func() int {
	n := max(spec.Keys, 1)
	if spec.Dist == "zipfian" && n > 1 {
		z := rand.NewZipf(rng, 1.1, 1, uint64(n-1))
		// Scatter the popular ranks over the key space, so the hot keys
		// do not all land next to each other (or on one shard).
		return func() int { return int((z.Uint64() * 2654435761) % uint64(n)) }
	}
	return func() int { return rng.Intn(n) }
}

func value(rng *rand.Rand, size int) []byte {
	v := make([]byte, size)
	rng.Read(v)
	return v
}

// Preload writes every key of spec once, with conc writers.
func Preload(ctx context.Context, s System, spec Spec, conc int) error {
	var next atomic.Int64
	var wg sync.WaitGroup
	errc := make(chan error, conc)
	for w := 0; w < conc; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			v := value(rand.New(rand.NewSource(int64(w))), spec.ValueSize)
			for {
				i := int(next.Add(1) - 1)
				if i >= spec.Keys || ctx.Err() != nil {
					return
				}
				var err error
				for try := 0; try < 5; try++ {
					if err = s.Put(ctx, keyName(i), v); err == nil {
						break
					}
					time.Sleep(50 * time.Millisecond)
				}
				if err != nil {
					errc <- fmt.Errorf("preloading %s into %s: %w", keyName(i), s.Name(), err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errc)
	if err := <-errc; err != nil {
		return err
	}
	return ctx.Err()
}

// NewWorkload binds workload name to system s. The workloads that read
// expect the key space to be preloaded (Preload).
func NewWorkload(name string, s System, spec Spec) (Workload, error) {
	w := Workload{Name: name}
	switch name {
	case WGet, WGetStale:
		stale := name == WGetStale
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick := chooser(spec, rng)
			return func(ctx context.Context) error { return s.Get(ctx, keyName(pick()), stale) }, nil
		}
	case WPut:
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick, v := chooser(spec, rng), value(rng, spec.ValueSize)
			return func(ctx context.Context) error { return s.Put(ctx, keyName(pick()), v) }, nil
		}
	case WCAS:
		w.NewClient = func(ctx context.Context, id int, rng *rand.Rand) (Op, error) {
			key := fmt.Sprintf("cas/%d/%d", id, rng.Int63())
			v := value(rng, spec.ValueSize)
			var rev uint64
			return func(ctx context.Context) error { return s.CAS(ctx, key, v, &rev) }, nil
		}
	case WMix90, WMix50:
		reads := 90
		if name == WMix50 {
			reads = 50
		}
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick, v := chooser(spec, rng), value(rng, spec.ValueSize)
			return func(ctx context.Context) error {
				if rng.Intn(100) < reads {
					return s.Get(ctx, keyName(pick()), false)
				}
				return s.Put(ctx, keyName(pick()), v)
			}, nil
		}
	case WScan:
		w.NewClient = func(_ context.Context, _ int, rng *rand.Rand) (Op, error) {
			pick := chooser(spec, rng)
			return func(ctx context.Context) error {
				_, err := s.Scan(ctx, keyPrefix, keyName(pick()), spec.ScanLimit)
				return err
			}, nil
		}
	case WLock:
		w.NewClient = func(_ context.Context, id int, rng *rand.Rand) (Op, error) {
			name := fmt.Sprintf("lock/%d/%d", id, rng.Int63())
			return func(ctx context.Context) error {
				release, err := s.Acquire(ctx, name, false)
				if err != nil {
					return err
				}
				return release(ctx)
			}, nil
		}
	case WLockContended, WHandoff:
		// Every client waits for the same lock and releases it as soon as
		// it holds it. Throughput is acquisitions per second; the handoff
		// is the time from one release to the next holder's acquire.
		lock := fmt.Sprintf("contended/%d", time.Now().UnixNano())
		var released atomic.Int64
		var handoff *SharedHistogram
		if name == WHandoff {
			handoff = new(SharedHistogram)
			w.Timer = handoff
		}
		w.NewClient = func(_ context.Context, _ int, _ *rand.Rand) (Op, error) {
			return func(ctx context.Context) error {
				release, err := s.Acquire(ctx, lock, true)
				if err != nil {
					return err
				}
				if r := released.Load(); handoff != nil && r != 0 {
					handoff.Record(time.Since(time.Unix(0, r)))
				}
				// Stamp before releasing: the next holder may be told
				// before this call returns.
				released.Store(time.Now().UnixNano())
				return release(ctx)
			}, nil
		}
	default:
		return Workload{}, fmt.Errorf("unknown workload %q (known: %v)", name, AllWorkloads)
	}
	return w, nil
}

// needsPreload reports whether a workload reads the preloaded key space.
func needsPreload(name string) bool {
	return slices.Contains([]string{WGet, WGetStale, WMix90, WMix50, WScan}, name)
}
