// Package daemontest tests a service binary (services/*/cmd/latchkey-*) as
// its users run it: the test binary re-executes itself as the daemon's main
// and the test reads its exit code and stderr. It imports testing; only
// tests link it.
package daemontest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/nats-io/nats.go/jetstream"
)

// Main is the body of a daemon package's TestMain: when the environment
// variable env is set, it runs the daemon's main with env's words as its
// arguments (os.Args[0] is name) instead of the tests.
func Main(m *testing.M, env, name string, main func()) {
	if args := os.Getenv(env); args != "" {
		os.Args = append([]string{name}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// Run runs the daemon (the test binary, see Main) with args and returns its
// exit code and what it wrote to stderr.
func Run(t testing.TB, env, args string) (code int, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"="+args)
	var buf strings.Builder
	cmd.Stderr = &buf
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, buf.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), buf.String()
	}
	t.Fatalf("running the daemon: %v", err)
	return -1, ""
}

// MaxValueOverMaxPayloadRefused checks that a --max-value whose JSON get
// reply would not fit the server's max_payload is refused with exit code 2
// before the daemon creates or serves anything: bucket, the one it would
// create first, must not exist afterwards. args are the daemon's other
// arguments (its shards).
func MaxValueOverMaxPayloadRefused(t *testing.T, env, args, bucket string) {
	url := natstest.Server(t).ClientURL() // max_payload 1 MiB
	code, stderr := Run(t, env, "--server "+url+" "+args+" --max-value 900000")
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr %s", code, stderr)
	}
	if !strings.Contains(stderr, "max_payload of 1048576 bytes") {
		t.Fatalf("stderr %q does not say which limit", stderr)
	}
	js, err := jetstream.New(natstest.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.KeyValue(ctx, bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("bucket %s after the refusal: %v, want none created", bucket, err)
	}
}
