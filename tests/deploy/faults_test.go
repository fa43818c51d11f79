package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/check/compose"
	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// composeFaultCheck is `latchkey check --compose PROJECT` against the
// deployment: the random workload through the client user, while the
// compose injector kills, pauses and disconnects the NATS containers and
// kills and pauses the latchkey service containers on a seeded schedule.
// Every check (porcupine, lock overlap, tokens, fences, durability, TTL,
// the paused holder) must find nothing, and every fault must have been
// injected and healed.
func composeFaultCheck(ctx context.Context, t *testing.T, s *stack) {
	project := s.compose[slices.Index(s.compose, "-p")+1]
	inj, err := compose.New(ctx, compose.Options{Project: project, Log: testLog{t}})
	if err != nil {
		t.Fatal(err)
	}
	defer inj.Close(context.Background())
	var progress strings.Builder
	// Kept after the test: a violation is only worth its history.
	out, err := os.MkdirTemp("", "latchkey-deploy-check-")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("history and any porcupine visualisation: %s", out)
	rep, err := check.Run(ctx, check.Config{
		Duration:    45 * time.Second,
		Seed:        15,
		Injector:    inj,
		PauseHolder: true,
		Connect: func(ctx context.Context, i int) (*client.Client, error) {
			// Short pings, as the services have (kit/daemon): a client
			// on a frozen or disconnected server leaves it in seconds.
			cn, err := s.dial(s.urls, "client", nats.PingInterval(time.Second), nats.MaxPingsOutstanding(2))
			if err != nil {
				return nil, err
			}
			t.Cleanup(cn.nc.Close)
			return client.New(cn.nc, client.WithTimeout(2*time.Second)), nil
		},
		Progress:    &progress,
		OutDir:      out,
		HistoryFile: filepath.Join(out, "history.jsonl"),
	})
	if rep != nil {
		var sum strings.Builder
		rep.Print(&sum)
		t.Logf("latchkey check --compose %s:\n%s", project, sum.String())
		if len(rep.Faults) == 0 {
			t.Error("no fault was injected")
		}
		for _, f := range rep.Faults {
			if f.Err != nil {
				t.Errorf("fault %s: %v", f.Fault, f.Err)
			}
		}
	}
	if err != nil {
		t.Fatalf("latchkey check --compose: %v", err)
	}
}

// testLog sends the injector's docker commands to the test log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
