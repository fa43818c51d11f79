package client_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/latchkey/latchkey/kit/natstest"
	"github.com/latchkey/latchkey/services/locker"
	"github.com/latchkey/latchkey/services/router"
	"github.com/latchkey/latchkey/services/storage"
	"github.com/nats-io/nats.go"
)

// TestMain runs the examples against a real deployment, so that their
// Output lines are checked: an embedded NATS server with JetStream and the
// real storage (3 shards), router and locker, wired as `latchkey dev`
// wires them. The client module links these only in its tests
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
	var stops []func()
	stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	stops = append(stops, func() { _ = os.RemoveAll(dir) })
	srv, err := natstest.Start(natstest.Options{StoreDir: dir, Name: "examples"})
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { srv.Shutdown(); srv.WaitForShutdown() })
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		return nil, err
	}
	stops = append(stops, nc.Close)

	// Services stop before the connection and the server they use.
	stopService := func(f func(context.Context) error) func() {
		return func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = f(ctx)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := storage.Start(ctx, nc, storage.Config{Shards: []string{"0", "1", "2"}, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("storage: %w", err)
	}
	stops = append(stops, stopService(st.Stop))
	rt, err := router.Start(ctx, nc, router.Config{Shards: 3, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	stops = append(stops, stopService(rt.Stop))
	lk, err := locker.Start(ctx, nc, locker.Config{Logger: log})
	if err != nil {
		return nil, fmt.Errorf("locker: %w", err)
	}
	stops = append(stops, stopService(lk.Stop))
	deployment = srv.ClientURL()
	return stop, nil
}
