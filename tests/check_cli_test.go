package tests

import (
	"strings"
	"testing"
)

// TestCheckAgainstDev runs `latchkey check` against `latchkey dev`, as a
// user would, with paused lock holders: it must exit 0 and say so.
func TestCheckAgainstDev(t *testing.T) {
	if testing.Short() {
		t.Skip("runs traffic for seconds")
	}
	dev := startDev(t, t.TempDir())
	r := cli(t, "", "check", "--server="+dev.url, "--duration=6s", "--clients=4", "--pause-holder", "--seed=3", "--out="+t.TempDir())
	if r.code != 0 {
		t.Fatalf("latchkey check exited %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{"key-value history: linearizable", "no violations", "pause-holder"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(r.stderr, "ops") {
		t.Errorf("no progress lines on stderr:\n%s", r.stderr)
	}
}
