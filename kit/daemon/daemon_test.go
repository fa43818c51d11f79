package daemon_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/latchkey/latchkey/kit/daemon"
	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go"
)

// TestMain doubles as a service binary: with DAEMON_TEST_SERVER set, the
// test executable runs daemon.Main, so exit codes can be observed.
func TestMain(m *testing.M) {
	if url := os.Getenv("DAEMON_TEST_SERVER"); url != "" {
		fs := flag.NewFlagSet("latchkey-test", flag.ExitOnError)
		c := daemon.Flags(fs)
		maxValue := fs.Int("max-value", 0, "largest value in bytes")
		args := []string{"--server", url, "--max-value", os.Getenv("DAEMON_TEST_MAX_VALUE")}
		daemon.Main("latchkey-test", fs, c, args, nil, func(ctx context.Context, nc *nats.Conn, log *slog.Logger) (daemon.Stopper, error) {
			if err := daemon.CheckMaxValue(nc, *maxValue); err != nil {
				return nil, err
			}
			fmt.Println("serving")
			os.Exit(0)
			return nil, nil
		})
	}
	os.Exit(m.Run())
}

func TestMaxValueRefusedBeforeServing(t *testing.T) {
	url := natstest.Server(t).ClientURL() // max_payload 1 MiB
	cases := []struct {
		maxValue string
		code     int
		stderr   string
	}{
		{"0", 0, ""},
		{"524288", 0, ""},
		{"900000", 2, "--max-value (LATCHKEY_MAX_VALUE) does not fit the NATS server"},
		{"2000000", 2, "more than the server's max_payload of 1048576 bytes; use at most"},
	}
	for _, c := range cases {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "DAEMON_TEST_SERVER="+url, "DAEMON_TEST_MAX_VALUE="+c.maxValue)
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != c.code || !strings.Contains(stderr.String(), c.stderr) {
			t.Errorf("--max-value %s: exit %d, stderr %q; want exit %d naming %q", c.maxValue, code, stderr.String(), c.code, c.stderr)
		}
		if served := strings.Contains(stdout.String(), "serving"); served != (c.code == 0) {
			t.Errorf("--max-value %s: served %v, want %v", c.maxValue, served, c.code == 0)
		}
	}
}

func TestRefuse(t *testing.T) {
	if daemon.Refuse(nil) != nil {
		t.Fatal("Refuse(nil) is not nil")
	}
	base := errors.New("bad setting")
	if err := daemon.Refuse(base); !errors.Is(err, base) || err.Error() != "bad setting" {
		t.Fatalf("Refuse hides its error: %v", err)
	}
}
