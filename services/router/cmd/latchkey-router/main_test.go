package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/kit/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMain runs the real main when ROUTER_TEST_ARGS is set, so a test can
// watch the binary's exit code.
func TestMain(m *testing.M) {
	if args := os.Getenv("ROUTER_TEST_ARGS"); args != "" {
		os.Args = append([]string{"latchkey-router"}, strings.Fields(args)...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// A --max-value whose JSON get reply would not fit the server's
// max_payload is refused with exit code 2 before the router creates or
// serves anything.
func TestMaxValueOverMaxPayloadRefused(t *testing.T) {
	url := natstest.Server(t).ClientURL() // max_payload 1 MiB
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "ROUTER_TEST_ARGS=--server "+url+" --shards 1 --max-value 900000")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want 2; stderr %s", err, stderr.String())
	}
	if !strings.Contains(stderr.String(), "max_payload of 1048576 bytes") {
		t.Fatalf("stderr %q does not say which limit", stderr.String())
	}
	js, err := jetstream.New(natstest.Connect(t, url))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := js.KeyValue(ctx, subjects.New("").MetaBucket()); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("shard map bucket after the refusal: %v, want none created", err)
	}
}
