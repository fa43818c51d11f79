package main

import (
	"testing"

	"github.com/latchkey/latchkey/kit/daemon/daemontest"
	"github.com/latchkey/latchkey/kit/subjects"
)

// TestMain runs the real main when ROUTER_TEST_ARGS is set, so a test can
// watch the binary's exit code.
func TestMain(m *testing.M) { daemontest.Main(m, "ROUTER_TEST_ARGS", "latchkey-router", main) }

// A --max-value whose JSON get reply would not fit the server's
// max_payload is refused with exit code 2 before the router creates or
// serves anything.
func TestMaxValueOverMaxPayloadRefused(t *testing.T) {
	daemontest.MaxValueOverMaxPayloadRefused(t, "ROUTER_TEST_ARGS", "--shards 1", subjects.New("").MetaBucket())
}
