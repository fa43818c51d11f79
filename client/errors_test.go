package client_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/latchkey/latchkey/client"
	"github.com/nats-io/nats.go"
)

// The reason sentinels match what real services answer, through the wire
// and through a caller's own wrapping, and only their own reason.
func TestReasonSentinelsAcrossTheWire(t *testing.T) {
	nc, err := nats.Connect(deployment)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	c := client.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	rev, err := c.Put(ctx, "sentinel", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Put(ctx, "sentinel", []byte("b"), client.IfRevision(rev+100))
	wrapped := fmt.Errorf("saving: %w", err)
	if !errors.Is(wrapped, client.ErrRevisionMismatch) || !errors.Is(wrapped, client.ErrConflict) {
		t.Fatalf("CAS miss = %v, want ErrRevisionMismatch and ErrConflict", err)
	}
	if errors.Is(wrapped, client.ErrStaleFence) {
		t.Fatalf("CAS miss matches ErrStaleFence too")
	}
	if got := client.Reason(wrapped); got != client.ErrRevisionMismatch.Error() {
		t.Fatalf("Reason of a wrapped CAS miss = %q", got)
	}

	l, err := c.Acquire(ctx, "sentinel-lock", client.WithoutKeepAlive())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, "sentinel-lock", client.WithoutKeepAlive()); !errors.Is(err, client.ErrLockHeld) {
		t.Fatalf("second acquire = %v, want ErrLockHeld", err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Renew(ctx, "sentinel-lock", l.Token(), 0); !errors.Is(err, client.ErrNotHeld) {
		t.Fatalf("renew after release = %v, want ErrNotHeld", err)
	}
}
