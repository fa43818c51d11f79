package check_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/latchkey/latchkey/check"
	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// Run the checker against a deployment, without faults, and print the
// summary. (`latchkey check --server URL` does this.)
func ExampleRun() {
	ctx := context.Background()
	rep, err := check.Run(ctx, check.Config{
		Duration: 30 * time.Second,
		Clients:  8,
		Seed:     42,
		Connect: func(_ context.Context, i int) (*client.Client, error) {
			nc, err := nats.Connect("nats://127.0.0.1:4222", nats.MaxReconnects(-1))
			if err != nil {
				return nil, err
			}
			return client.New(nc), nil
		},
		PauseHolder: true,
		Progress:    os.Stderr,
	})
	if rep != nil {
		rep.Print(os.Stdout)
	}
	if errors.Is(err, check.ErrViolations) {
		fmt.Println("violations; see the summary")
	}
}
