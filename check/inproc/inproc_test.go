package inproc_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/inproc"
)

// testDuration is how long the CI run drives traffic; LATCHKEY_CHECK_DURATION
// overrides it for a longer run by hand.
func testDuration(t *testing.T) time.Duration {
	if v := os.Getenv("LATCHKEY_CHECK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("LATCHKEY_CHECK_DURATION: %v", err)
		}
		return d
	}
	return 45 * time.Second
}

// TestCheckUnderFaults is the CI run of `latchkey check --in-process`: a
// three-node cluster with R3 buckets and two instances of every service,
// traffic from eight clients, and a seeded schedule of node kills (stream
// leaders too), service restarts and a paused lock holder. It must find
// no violation.
func TestCheckUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault run")
	}
	ctx := context.Background()
	d, err := inproc.Start(ctx, inproc.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rep, err := check.Run(ctx, check.Config{
		Duration:    testDuration(t),
		Seed:        uint64(time.Now().UnixNano()),
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
		t.Fatal(err)
	}
	if rep.Total.OK == 0 {
		t.Fatal("no operation succeeded")
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

// testWriter sends the run's output to the test log, one line per entry.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		w.t.Log(line)
	}
	return len(p), nil
}

// TestCheckWatchUnderFaults runs the check with Config.Watch under the
// default faults: the watch on the namespace must deliver, per key in
// revision order, every acknowledged change across kills and restarts,
// and must not end by itself.
func TestCheckWatchUnderFaults(t *testing.T) {
	if testing.Short() {
		t.Skip("fault run")
	}
	ctx := context.Background()
	d, err := inproc.Start(ctx, inproc.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	rep, err := check.Run(ctx, check.Config{
		Duration:    18 * time.Second,
		Seed:        uint64(time.Now().UnixNano()),
		Connect:     d.Connect,
		Injector:    d,
		PauseHolder: true,
		Watch:       true,
		Progress:    testWriter{t},
		OutDir:      t.TempDir(),
	})
	if rep != nil {
		rep.Print(testWriter{t})
	}
	if err != nil {
		t.Fatal(err)
	}
	if rep.Watch == "" || rep.Watch == "0 events" {
		t.Fatalf("the watch saw nothing: %q", rep.Watch)
	}
	if len(rep.Faults) == 0 {
		t.Fatal("no fault was injected")
	}
}
