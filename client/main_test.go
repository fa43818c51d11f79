package client_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/latchkey/latchkey/suite"
)

// TestMain runs the examples against a real deployment, so that their
// Output lines are checked: an embedded NATS server with JetStream and the
// real storage (3 shards), router and locker, the suite `latchkey dev`
// runs (package suite). The client module links these only in its tests
// (deps_test.go keeps them out of the client itself).
func TestMain(m *testing.M) {
	stop, err := startDeployment()
	if err != nil {
		fmt.Fprintln(os.Stderr, "starting the example deployment:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	os.Exit(code)
}

// startDeployment starts the deployment the examples use and points
// deployment at it. The returned function stops everything.
func startDeployment() (stop func(), err error) {
	dir, err := os.MkdirTemp("", "latchkey-client-examples-")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	d, err := suite.StartServer(ctx, suite.ServerConfig{Dir: dir, Name: "examples"})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	deployment = d.URL
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		d.Stop(ctx)
		_ = os.RemoveAll(dir)
	}, nil
}
