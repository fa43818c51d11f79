package procs_test

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/procs"
)

// envDuration and envSeed let a longer run by hand reuse the CI test:
// LATCHKEY_CHECK_DURATION=10m LATCHKEY_CHECK_SEED=3 go test -run TestProcessFaults ./check/procs
func envDuration(t *testing.T, def time.Duration) time.Duration {
	if v := os.Getenv("LATCHKEY_CHECK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("LATCHKEY_CHECK_DURATION: %v", err)
		}
		return d
	}
	return def
}

func envSeed(t *testing.T, def uint64) uint64 {
	if v := os.Getenv("LATCHKEY_CHECK_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("LATCHKEY_CHECK_SEED: %v", err)
		}
		return s
	}
	return def
}

// start starts a process deployment. Outside CI a machine that cannot
// build nats-server or the services (no module cache, no network) skips
// with the reason; under CI=true that is a failure.
func start(t *testing.T, o procs.Options) *procs.Deployment {
	t.Helper()
	if testing.Short() {
		t.Skip("process fault run")
	}
	o.Dir = t.TempDir()
	o.Log = testWriter{t}
	d, err := procs.Start(context.Background(), o)
	if err != nil {
		if os.Getenv("CI") != "true" && errors.Is(err, procs.ErrBuild) {
			t.Skipf("cannot build the binaries here (under CI=true this fails): %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	return d
}

// TestProcessFaults is the CI run of `latchkey check --faults processes`:
// separate nats-server, storage, router and locker processes, and a
// seeded schedule of SIGKILLs (a stream leader, every server at once, each
// service), SIGSTOP pauses, partitions through the route proxies and a
// paused lock holder, with sync_interval always. Any violation,
// inconclusive check or fault that could not be injected fails it.
//
// Power cuts are opt-in here (LATCHKEY_PROCS_POWER=1; TestPowerLossSyncAlways
// too): they were left out while a stale read seen after one looked tied
// to them (it was a view skipping deleted messages, fixed in storage), and
// have not been rerun often enough since to gate CI on.
func TestProcessFaults(t *testing.T) {
	powerLoss := os.Getenv("LATCHKEY_PROCS_POWER") == "1"
	if _, err := os.Stat("/dev/fuse"); powerLoss && err != nil {
		t.Fatalf("LATCHKEY_PROCS_POWER=1 needs /dev/fuse: %v", err)
	}
	d := start(t, procs.Options{PowerLoss: powerLoss, SyncAlways: true})
	seed := envSeed(t, 1)
	rep, err := check.Run(context.Background(), check.Config{
		Duration:    envDuration(t, 100*time.Second),
		Seed:        seed,
		Connect:     d.Connect,
		Injector:    d,
		PauseHolder: true,
		Progress:    testWriter{t},
		OutDir:      t.TempDir(),
	})
	if rep != nil {
		rep.Print(testWriter{t})
	}
	if err != nil {
		t.Fatalf("seed %d: %v", seed, err)
	}
	if !strings.HasPrefix(rep.Linearizable, "linearizable") {
		t.Errorf("porcupine: %s", rep.Linearizable)
	}
	if len(rep.Faults) == 0 {
		t.Fatal("no fault was injected")
	}
	for _, f := range rep.Faults {
		if f.Err != nil {
			t.Errorf("fault %s: %v", f.Fault, f.Err)
		}
	}
}

// testWriter sends output to the test log, one line per entry.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(line)
	}
	return len(p), nil
}
